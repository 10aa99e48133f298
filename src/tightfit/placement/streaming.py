"""The copy-in / update / copy-out pipeline of one paged step, over a StreamLayer.

Chunks of paged states go through ``slots`` reusable device buffers. Chunk i lives in
slot i % slots. Issue order per chunk i:

* copy-in of chunk i + slots - 1 (on ``h2d``, after the copy-out that last used its slot);
* the compute stream waits for chunk i's copy-in, runs the update, records an event;
* ``d2h`` waits for that event and copies chunk i back to its pinned host block.

So the copy-in of the next chunks and the copy-out of the previous one overlap the update
of the current one, at most ``slots`` chunks occupy device memory, and the host never
waits: ordering is by events only. At the end the compute stream waits for the last
copy-out, so later work (and the slots' memory reuse) is ordered after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..codecs import Encoded
from .streams import StreamLayer

StepFn = Callable[[list[torch.Tensor], list[dict[str, Any]]], None]


@dataclass
class PagedParam:
    """One parameter whose encoded states all live in one pinned host block."""

    param: torch.Tensor
    state: dict[str, Any]
    block: torch.Tensor  # flat uint8 over the host storage that every state buffer views

    @property
    def nbytes(self) -> int:
        return self.block.numel()

    def spans(self) -> list[tuple[torch.Tensor, int]]:
        """(host bytes, byte offset in the member's slot range) copied each way: one block."""
        return [(self.block, 0)]

    def slot_views(self, slot: torch.Tensor, offset: int) -> dict[str, Encoded]:
        return device_views(self, slot, offset)


@dataclass
class PagedPiece:
    """Elements [lo, hi) of a paged param too large for one chunk (elementwise rules only).

    ``param`` is a flat view of those elements (its ``.grad`` a flat view of the grad's);
    ``state`` holds block-aligned slices of the param's host states (``Codec.slice``) and
    the counters the pieces of one param share; ``layout`` places each sliced buffer in
    the slot, one after another.
    """

    param: torch.Tensor
    state: dict[str, Any]
    layout: list[tuple[str, str, torch.Tensor, int]]  # (state, buffer key, host view, offset)
    nbytes: int

    def spans(self) -> list[tuple[torch.Tensor, int]]:
        return [(view.reshape(-1).view(torch.uint8), offset) for _, _, view, offset in self.layout]

    def slot_views(self, slot: torch.Tensor, offset: int) -> dict[str, Encoded]:
        views = {name: Encoded(enc.codec, enc.kind, enc.shape, {}) for name, enc in self.state.items()
                 if isinstance(enc, Encoded)}
        for name, key, host, rel in self.layout:
            start = offset + rel
            nbytes = host.numel() * host.element_size()
            views[name].buffers[key] = slot[start:start + nbytes].view(host.dtype).view(host.shape)
        return views


@dataclass
class Chunk:
    members: list[PagedParam | PagedPiece] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # byte offset of each member in the slot
    nbytes: int = 0


ALIGN = 16  # byte alignment of every buffer in host blocks and slots (vector loads, triton divisibility)


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def buffer_layout(items: Sequence[tuple[str, Encoded]]) -> tuple[list[tuple[str, str, torch.Tensor, int]], int]:
    """Every buffer of these encoded states placed one after another at ALIGN-ed byte
    offsets: ([(state name, buffer key, buffer, offset)], total bytes). Host blocks and
    streamed pieces are laid out this way."""
    layout, total = [], 0
    for name, enc in items:
        for key, buf in enc.buffers.items():
            layout.append((name, key, buf, total))
            total += _aligned(buf.numel() * buf.element_size())
    return layout, total


def consecutive_runs(sizes: Sequence[int], limit: int) -> list[list[int]]:
    """Indices of consecutive items, greedily grouped so that each group's sizes sum to at
    most ``limit``; an item larger than ``limit`` is a group alone."""
    groups: list[list[int]] = []
    total = 0
    for index, size in enumerate(sizes):
        if not groups or total + size > limit:
            groups.append([])
            total = 0
        groups[-1].append(index)
        total += size
    return groups


def chunk_groups(sizes: Sequence[int], chunk_bytes: int) -> list[list[int]]:
    """Indices of consecutive members per chunk, up to ``chunk_bytes`` of aligned sizes
    per chunk; a larger member is a chunk alone."""
    return consecutive_runs([_aligned(size) for size in sizes], chunk_bytes)


def slot_bytes(sizes: Sequence[int], chunk_bytes: int, slots: int) -> int:
    """Device bytes the streaming slots take for members of these byte sizes (in order):
    min(slots, chunks) slots, each as large as the largest chunk. The planner uses it too."""
    groups = chunk_groups(sizes, chunk_bytes)
    if not groups:
        return 0
    return min(slots, len(groups)) * max(sum(_aligned(sizes[i]) for i in g) for g in groups)


def make_chunks(members: Sequence[PagedParam | PagedPiece], chunk_bytes: int) -> list[Chunk]:
    """Members grouped by ``chunk_groups``, with each member's byte offset in its slot."""
    chunks: list[Chunk] = []
    for group in chunk_groups([m.nbytes for m in members], chunk_bytes):
        chunk = Chunk()
        for index in group:
            chunk.members.append(members[index])
            chunk.offsets.append(chunk.nbytes)
            chunk.nbytes += _aligned(members[index].nbytes)
        chunks.append(chunk)
    return chunks


def device_views(member: PagedParam, slot: torch.Tensor, offset: int) -> dict[str, Encoded]:
    """The member's encoded states as views into ``slot``, laid out as in its host block."""
    views = {}
    for name, enc in member.state.items():
        if not isinstance(enc, Encoded):
            continue
        buffers = {}
        for key, buf in enc.buffers.items():
            start = offset + buf.storage_offset() * buf.element_size()
            nbytes = buf.numel() * buf.element_size()
            buffers[key] = slot[start:start + nbytes].view(buf.dtype).view(buf.shape)
        views[name] = Encoded(enc.codec, enc.kind, enc.shape, buffers)
    return views


def _update(chunk: Chunk, slot: torch.Tensor, step_fn: StepFn) -> Callable[[], None]:
    """Work for the compute stream: step the chunk's params on device views of their states."""
    def work() -> None:
        views = [{**m.state, **m.slot_views(slot, off)} for m, off in zip(chunk.members, chunk.offsets)]
        step_fn([m.param for m in chunk.members], views)
        for member, view in zip(chunk.members, views):  # counters an impl replaced rather than updated
            member.state.update({k: v for k, v in view.items() if not isinstance(v, Encoded)})
    return work


def stream_chunks(layer: StreamLayer, chunks: Sequence[Chunk], step_fn: StepFn, slots: int,
                  overlap: Callable[[], None] | None = None) -> None:
    """Run ``step_fn`` on every chunk's params with their states streamed through device slots.

    ``overlap`` (device-resident updates) is issued on the compute stream right after the
    first copy-ins, so it runs while they are in flight.
    """
    if slots < 1:
        raise ValueError(f"invalid slots={slots!r} (allowed: an int >= 1)")
    n = len(chunks)
    if n == 0:
        if overlap is not None:
            layer.run(layer.compute, overlap, "resident")
        return
    slot_bytes = max(chunk.nbytes for chunk in chunks)
    buffers: list[torch.Tensor] = []
    copied_in: list[Any] = [None] * n
    copied_out: list[Any] = [None] * n
    # copy-ins write memory the compute stream may have used before this step
    layer.wait(layer.h2d, layer.record(layer.compute, "start"), "start")

    def copy_in(j: int) -> None:
        if j >= slots:
            layer.wait(layer.h2d, copied_out[j - slots], ("slot_free", j))
        if j % slots == len(buffers):
            buffers.append(layer.device_empty(slot_bytes))
        slot = buffers[j % slots]
        for member, offset in zip(chunks[j].members, chunks[j].offsets):
            for host, rel in member.spans():
                start = offset + rel
                layer.copy(layer.h2d, slot[start:start + host.numel()], host, ("copy_in", j))
        copied_in[j] = layer.record(layer.h2d, ("copied_in", j))

    for j in range(min(slots - 1, n)):
        copy_in(j)
    if overlap is not None:
        layer.run(layer.compute, overlap, "resident")
    for i in range(n):
        if i + slots - 1 < n:
            copy_in(i + slots - 1)
        slot = buffers[i % slots]
        layer.wait(layer.compute, copied_in[i], ("update_waits", i))
        layer.run(layer.compute, _update(chunks[i], slot, step_fn), ("update", i))
        layer.wait(layer.d2h, layer.record(layer.compute, ("updated", i)), ("copy_out_waits", i))
        for member, offset in zip(chunks[i].members, chunks[i].offsets):
            for host, rel in member.spans():
                start = offset + rel
                layer.copy(layer.d2h, host, slot[start:start + host.numel()], ("copy_out", i))
        copied_out[i] = layer.record(layer.d2h, ("copied_out", i))
    layer.wait(layer.compute, copied_out[n - 1], "end")
    layer.finish()
