"""Paged placement: encoded states live in pinned host memory and stream through the device.

Each paged parameter's encoded states are packed into one pinned host block (one copy
per parameter each way, whatever the codec's buffer count). ``step()`` streams them
through ``SLOTS`` reusable device buffers on side streams (streaming.py), ordered by
CUDA events, without host synchronisation and without CUDA managed memory (which can
hang a GPU when oversubscribed and is invisible to torch's memory counters).

A device budget (``paged="4GiB"``) keeps the parameters with the smallest states on the
device until the budget is spent and pages the rest: that leaves the fewest, largest
transfers, which run closest to PCIe bandwidth. The budget counts the states of every
param group that asks for the same budget (the optimizer passes them all as ``params``).

Under an elementwise rule a parameter whose states exceed a chunk streams in pieces
(pieces.py), so the slots stay at SLOTS x the chunk size whatever the model; otherwise a
parameter's states move as a whole and a slot holds at least the largest of them. On a device type without a stream layer
(the CPU) paging is a no-op: states stay with the params, with one warning per optimizer.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..codecs import Encoded, encoded_states
from .device import Placement, StepFn, counters_on, moved
from ..dtensor import is_dtensor
from .pieces import split_member, split_sizes
from .streaming import PagedParam, buffer_layout, make_chunks, slot_bytes, stream_chunks
from .streams import StreamLayer, cached_layer

SLOTS = 3  # copy-in of the next chunk, update of this one, copy-out of the previous one
CHUNK_BYTES = 16 << 20  # largest chunk: SLOTS x 16 MiB = 48 MiB of device memory; 16 MiB copies run near PCIe speed
MIN_CHUNK_BYTES = 1 << 20  # below this, a PCIe transfer is dominated by its fixed cost
CHUNKS_PER_SLOT_SET = 16  # small paged totals: slots hold ~SLOTS/16 of the state, not SLOTS x 64 MiB


def paged_slot_bytes(member_bytes: list[int], splittable: bool = False) -> int:
    """Device bytes of the streaming slots for paged members of these sizes (in order);
    ``splittable``: members larger than a chunk stream in pieces (pieces.py)."""
    chunk_bytes = chunk_bytes_for(sum(member_bytes))
    if splittable and chunk_bytes >= MIN_CHUNK_BYTES:
        member_bytes = [piece for size in member_bytes for piece in split_sizes(size, chunk_bytes)]
    return slot_bytes(member_bytes, chunk_bytes, SLOTS)


def chunk_bytes_for(paged_bytes: int) -> int:
    """Target chunk size for ``paged_bytes`` of paged state: CHUNK_BYTES for large states, but
    at most 1/16 of the total (at least 1 MiB), so paging a small state (QLoRA adapters)
    does not cost more device memory than keeping it there."""
    return min(CHUNK_BYTES, max(MIN_CHUNK_BYTES, paged_bytes // CHUNKS_PER_SLOT_SET))


def plan_resident(params: list[torch.Tensor], state_bytes: Callable[[torch.Tensor], int],
                  budget: int) -> set[torch.Tensor]:
    """Params whose states stay on the device: smallest states first while the budget lasts."""
    sizes = [state_bytes(p) for p in params]
    resident, used = set(), 0
    for index in sorted(range(len(params)), key=lambda i: (sizes[i], i)):
        used += sizes[index]
        if used > budget:
            break
        resident.add(params[index])
    return resident


def host_block(items: list[tuple[str, Encoded]], layer: StreamLayer) -> torch.Tensor | None:
    """The pinned block all of a param's state buffers view, or None if they are not packed."""
    buffers = [b for _, enc in items for b in enc.buffers.values()]
    if not buffers or len({b.untyped_storage().data_ptr() for b in buffers}) != 1:
        return None
    storage = buffers[0].untyped_storage()
    block = torch.empty(0, dtype=torch.uint8, device=buffers[0].device).set_(storage)
    return block if layer.is_host(block) else None


def pack(items: list[tuple[str, Encoded]], layer: StreamLayer) -> dict[str, Encoded]:
    """Copies of the encoded states as views into one new pinned host block."""
    layout, total = buffer_layout(items)
    block = layer.host_empty(total)
    packed = {name: Encoded(enc.codec, enc.kind, enc.shape, {}) for name, enc in items}
    for name, key, buf, offset in layout:
        view = block[offset:offset + buf.numel() * buf.element_size()].view(buf.dtype).view(buf.shape)
        view.copy_(buf)
        packed[name].buffers[key] = view
    return packed


class PagedPlacement(Placement):
    name = "paged"

    def __init__(self, budget: int, params: list[torch.Tensor], state_bytes: Callable[[torch.Tensor], int],
                 warn: Callable[[str], None], splittable: bool = False) -> None:
        self.budget = budget
        self.splittable = splittable  # the rule is elementwise (and no stochastic rounding)
        self._params = params
        self._state_bytes = state_bytes
        self._warn = warn
        self._resident: set[torch.Tensor] | None = None
        self._layers: dict[torch.device, StreamLayer | None] = {}

    def _layer(self, device: torch.device) -> StreamLayer | None:
        return cached_layer(self._layers, device, lambda: self._warn(
            f"paged optimizer states have no effect for parameters on {device.type}: paging streams states "
            f"between pinned host memory and a GPU, so they stay in {device.type} memory"))

    def pages(self, param: torch.Tensor) -> bool:
        """True when ``param``'s states belong in host memory."""
        if self._layer(param.device) is None:
            return False
        if self._resident is None:
            self._resident = plan_resident(list(self._params), self._state_bytes, self.budget)
        return param not in self._resident

    def home(self, param: torch.Tensor) -> torch.device:
        return torch.device("cpu") if self.pages(param) else param.device

    def settle(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        counters_on(state, param.device)  # e.g. the group was offloaded before
        items = list(encoded_states(state).items())
        layer = self._layer(param.device)
        if not items or layer is None:
            return
        block = host_block(items, layer)
        if self.pages(param):
            if block is None:
                self.host_ready()
                state.update(pack(items, layer))
        elif block is not None or any(enc.device != param.device for _, enc in items):
            self.host_ready()
            state.update({name: moved(enc, param.device) for name, enc in items})

    def location(self, param: torch.Tensor, state: dict[str, Any]) -> str:
        layer = self._layer(param.device)
        return "host" if layer is not None and host_block(list(encoded_states(state).items()), layer) is not None else "device"

    def _split(self, params, states) -> tuple[list, list, dict[torch.device, list[PagedParam]]]:
        resident_params, resident_states, paged = [], [], {}
        for param, state in zip(params, states):
            layer = self._layer(param.device)
            block = None if layer is None else host_block(list(encoded_states(state).items()), layer)
            if block is None:
                resident_params.append(param)
                resident_states.append(state)
            else:
                paged.setdefault(param.device, []).append(PagedParam(param, state, block))
        return resident_params, resident_states, paged

    def run(self, params: list[torch.Tensor], states: list[dict[str, Any]], step_fn: StepFn) -> None:
        resident_params, resident_states, paged = self._split(params, states)
        devices = list(paged)
        overlap = None
        if resident_params:
            def overlap() -> None:
                step_fn(resident_params, resident_states)
            if not devices or any(p.device != devices[0] for p in resident_params):
                overlap()  # nothing streams on their device to overlap with
                overlap = None
        for device in devices:  # device-resident updates run while the first chunks copy in
            members = paged[device]
            chunk_bytes = chunk_bytes_for(sum(m.nbytes for m in members))
            members, write_backs = self._pieces(members, chunk_bytes)
            stream_chunks(self._layers[device], make_chunks(members, chunk_bytes), step_fn, SLOTS, overlap)
            for write_back in write_backs:  # on the compute stream, after the last piece's update
                write_back()
            overlap = None

    def _pieces(self, members: list[PagedParam], chunk_bytes: int) -> tuple[list, list[Callable[[], None]]]:
        """Members larger than a chunk replaced by their pieces, when the rule allows it."""
        if not self.splittable or chunk_bytes < MIN_CHUNK_BYTES:
            return members, []
        out, write_backs = [], []
        for member in members:
            whole = (member.nbytes <= chunk_bytes or is_dtensor(member.param)  # FSDP2 shards stream whole
                     or not (member.param.is_contiguous() and member.param.grad.is_contiguous()))
            if whole:
                out.append(member)
                continue
            pieces, write_back = split_member(member, chunk_bytes)
            out += pieces
            write_backs.append(write_back)
        return out, write_backs

    def host_ready(self) -> None:
        for layer in self._layers.values():
            if layer is not None:
                layer.synchronize()

    def stream_buffer_bytes(self, params, states) -> int:
        _, _, paged = self._split(params, states)
        return sum(paged_slot_bytes([m.nbytes for m in members], self.splittable) for members in paged.values())
