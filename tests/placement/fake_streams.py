"""A StreamLayer for CPU tensors that defers work per stream and records every operation.

Each stream is a FIFO queue; nothing runs when issued. ``finish``/``synchronize`` drain
the queues in a random order that respects only what real CUDA streams guarantee: FIFO
order within a stream and event waits across streams. A missing wait therefore shows up
as wrong numbers or as more chunks in device slots than the layer has slots.
"""

from __future__ import annotations

import random
from collections import deque

import torch

from tightfit.placement import StreamLayer

GARBAGE = 0xAB  # fresh device slots hold this, so reading a slot before its copy-in is visible


class FakeEvent:
    def __init__(self, label):
        self.label, self.done = label, False


class FakeStreams(StreamLayer):
    def __init__(self, seed: int = 0) -> None:
        self.compute, self.h2d, self.d2h = "compute", "h2d", "d2h"
        self.queues = {name: deque() for name in (self.compute, self.h2d, self.d2h)}
        self.rng = random.Random(seed)
        self.issued: list[tuple[str, object]] = []  # (stream, label) in issue order
        self.executed: list[tuple[str, object]] = []  # (stream, label) in execution order
        self.device_allocations = 0
        self.live: set[int] = set()  # chunks copied in and not yet copied out
        self.max_live = 0
        self._host_blocks: list[torch.Tensor] = []  # kept alive: their addresses identify them

    def device_empty(self, nbytes):
        self.device_allocations += 1
        return torch.full((nbytes,), GARBAGE, dtype=torch.uint8)

    def host_empty(self, nbytes):
        block = torch.full((nbytes,), GARBAGE, dtype=torch.uint8)
        self._host_blocks.append(block)
        return block

    def is_host(self, block):
        ptr = block.untyped_storage().data_ptr()
        return any(b.untyped_storage().data_ptr() == ptr for b in self._host_blocks)

    def _issue(self, stream, label, op, ready=lambda: True):
        self.issued.append((stream, label))
        self.queues[stream].append((label, op, ready))

    def copy(self, stream, dst, src, label):
        self._issue(stream, label, lambda: dst.copy_(src))

    def run(self, stream, work, label):
        self._issue(stream, label, work)

    def record(self, stream, label):
        event = FakeEvent(label)
        self._issue(stream, ("record", label), lambda: setattr(event, "done", True))
        return event

    def wait(self, stream, event, label):
        self._issue(stream, ("wait", label), lambda: None, ready=lambda: event.done)

    def host_wait(self, event):
        """Run queued work, in a random legal order, until ``event`` is done (other work may stay queued)."""
        while not event.done:
            self._run_one()

    def finish(self):
        self.drain()

    def synchronize(self):
        self.drain()

    def drain(self):
        while any(self.queues.values()):
            self._run_one()

    def _run_one(self):
        runnable = [name for name, q in self.queues.items() if q and q[0][2]()]
        if not runnable:
            raise RuntimeError(f"streams deadlocked; heads: {[q[0][0] for q in self.queues.values() if q]}")
        stream = self.rng.choice(runnable)
        label, op, _ = self.queues[stream].popleft()
        op()
        self.executed.append((stream, label))
        self._track(label)

    def _track(self, label):
        if isinstance(label, tuple) and label[0] == "copy_in":
            self.live.add(label[1])
        elif isinstance(label, tuple) and label[0] == "record" and label[1][0] == "copied_out":
            self.live.discard(label[1][1])
        self.max_live = max(self.max_live, len(self.live))

    # -- queries for tests ---------------------------------------------------------------
    def first_issued(self, label) -> int:
        return next(i for i, (_, lab) in enumerate(self.issued) if lab == label)

    def executed_at(self, label) -> list[int]:
        return [i for i, (_, lab) in enumerate(self.executed) if lab == label]
