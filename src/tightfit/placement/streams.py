"""The small device/stream layer that paged and offload placements move bytes through.

Placement code only ever talks to a ``StreamLayer``: allocate pinned host and device bytes,
copy on a stream, run work on a stream, record an event, make a stream (or the host) wait
for an event.
``CudaStreams`` is the real one (torch.cuda streams and events, non-blocking copies, no
host synchronisation); tests register a recording fake for CPU tensors
(tests/placement/fake_streams.py) so that the buffering logic runs without a GPU.

``STREAM_LAYERS`` maps a device type to a layer factory; a device type without one
(e.g. "cpu") cannot page, and paged placement leaves its states where the params are.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class StreamLayer:
    """Streams ``compute`` (where updates run), ``h2d`` (copy-in) and ``d2h`` (copy-out).

    ``label`` arguments name the operation, e.g. ``("copy_in", 3)``; the real layer
    ignores them, the test layer records them.
    """

    compute: Any
    h2d: Any
    d2h: Any

    def device_empty(self, nbytes: int) -> torch.Tensor:
        """Uninitialised uint8 device bytes (a reusable streaming slot)."""
        raise NotImplementedError

    def host_empty(self, nbytes: int) -> torch.Tensor:
        """Uninitialised uint8 pinned host bytes (a paged state's home)."""
        raise NotImplementedError

    def is_host(self, block: torch.Tensor) -> bool:
        """True when ``block`` was made by ``host_empty`` (pinned host memory)."""
        raise NotImplementedError

    def copy(self, stream: Any, dst: torch.Tensor, src: torch.Tensor, label: Any) -> None:
        raise NotImplementedError

    def run(self, stream: Any, work: Callable[[], None], label: Any) -> None:
        """Issue ``work`` (which launches device work) on ``stream``."""
        raise NotImplementedError

    def record(self, stream: Any, label: Any) -> Any:
        """An event that completes when everything issued on ``stream`` so far has."""
        raise NotImplementedError

    def wait(self, stream: Any, event: Any, label: Any) -> None:
        """Work issued on ``stream`` after this waits for ``event`` (the host does not)."""
        raise NotImplementedError

    def host_wait(self, event: Any) -> None:
        """Block the host until ``event`` has completed (offload: before the CPU reads a
        copied gradient or rewrites a master weight a copy still reads)."""
        raise NotImplementedError

    def finish(self) -> None:
        """End of one streamed step; the compute stream already waits for the copy-outs."""

    def synchronize(self) -> None:
        """Block the host until every copy-out has landed (before the host reads states)."""
        raise NotImplementedError


class CudaStreams(StreamLayer):
    """torch.cuda streams and events on one device; side streams are shared per device."""

    _side_streams: dict[int, tuple[torch.cuda.Stream, torch.cuda.Stream]] = {}

    def __init__(self, device: torch.device) -> None:
        self.device = device
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in self._side_streams:
            self._side_streams[index] = (torch.cuda.Stream(index), torch.cuda.Stream(index))
        self.h2d, self.d2h = self._side_streams[index]

    @property
    def compute(self) -> torch.cuda.Stream:
        return torch.cuda.current_stream(self.device)  # whatever stream the caller steps on

    def device_empty(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def host_empty(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def is_host(self, block: torch.Tensor) -> bool:
        return block.device.type == "cpu" and block.is_pinned()

    def copy(self, stream, dst, src, label) -> None:
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)

    def run(self, stream, work, label) -> None:
        with torch.cuda.stream(stream):
            work()

    def record(self, stream, label) -> torch.cuda.Event:
        event = torch.cuda.Event()
        event.record(stream)
        return event

    def wait(self, stream, event, label) -> None:
        stream.wait_event(event)

    def host_wait(self, event) -> None:
        event.synchronize()

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


STREAM_LAYERS: dict[str, Callable[[torch.device], StreamLayer]] = {"cuda": CudaStreams}


def stream_layer_for(device: torch.device) -> StreamLayer | None:
    """The layer that pages states of params on ``device``; None where paging is a no-op."""
    factory = STREAM_LAYERS.get(device.type)
    return None if factory is None else factory(device)


def cached_layer(layers: dict[torch.device, StreamLayer | None], device: torch.device,
                 on_missing: Callable[[], None]) -> StreamLayer | None:
    """``device``'s layer from the ``layers`` cache, looked up once (``on_missing()`` is
    called then when the device type has none: the placement's one warning)."""
    if device not in layers:
        layers[device] = stream_layer_for(device)
        if layers[device] is None:
            on_missing()
    return layers[device]
