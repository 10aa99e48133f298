"""What an optimizer's state costs where: device bytes, host bytes, per codec.

Bytes are exact ``Encoded.nbytes`` sums (step counters, a few bytes per param, excluded;
so is the < 16 B alignment padding between buffers in a paged block, the < 64 B between
offload's host buffers, and whatever torch's pinned-memory allocator rounds a block up
to), plus, for offloaded params, the host master weights and grad transfer buffers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .codecs import Encoded
from .placement import LOCATIONS


@dataclass(frozen=True)
class MemoryReport:
    """``device_bytes``: states on the params' devices; ``host_bytes``: everything the
    optimizer keeps in host memory (states paged or offloaded there, plus offload's master
    weights and grad buffers); ``by_codec``: {codec: {"device": bytes, "host": bytes}}
    (states only); ``paged_params``: params whose states are paged; ``stream_buffer_bytes``:
    device bytes a ``step()`` borrows to stream paged states (freed after the step);
    ``offloaded_params``, ``offload_master_bytes`` (fp32 master weights, 4 B/element) and
    ``offload_grad_bytes`` (pinned grad transfer buffers, the param's dtype): offload's."""

    device_bytes: int = 0
    host_bytes: int = 0
    by_codec: dict[str, dict[str, int]] = field(default_factory=dict)
    paged_params: int = 0
    stream_buffer_bytes: int = 0
    offloaded_params: int = 0
    offload_master_bytes: int = 0
    offload_grad_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.device_bytes + self.host_bytes

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def memory_report(opt) -> MemoryReport:
    totals = dict.fromkeys(LOCATIONS, 0)
    by_codec: dict[str, dict[str, int]] = {}
    host_params = stream_bytes = 0
    offload = [0, 0, 0]  # master bytes, grad buffer bytes, params
    for group in opt.param_groups:
        placement = opt.placement_for(group)
        params = [p for p in group["params"] if p in opt.state]
        states = [opt.state[p] for p in params]
        for param, state in zip(params, states):
            where = placement.location(param, state)
            host_params += where == "host"
            for value in state.values():
                if isinstance(value, Encoded):
                    totals[where] += value.nbytes
                    by_codec.setdefault(value.codec, dict.fromkeys(LOCATIONS, 0))[where] += value.nbytes
        stream_bytes += placement.stream_buffer_bytes(params, states)
        offload = [a + b for a, b in zip(offload, placement.offload_bytes(params))]
    master, grad, offloaded = offload
    return MemoryReport(totals["device"], totals["host"] + master + grad, by_codec, host_params - offloaded,
                        stream_bytes, offloaded, master, grad)
