"""Offload placement (ZeRO-Offload): master weights, states and the step itself on the host.

With ``offload=True`` the device keeps only the params (any dtype, e.g. bf16) and their
grads. Per param the host keeps an fp32 master copy of the weights (pinned), the encoded
states (plain host memory: they never move) and a pinned transfer buffer in the param's
dtype, which receives the grad and sends back the new weights. The step runs on the CPU
through the same step function as any other placement, so CPU tensors pick tightfit's
native kernels. The masters and transfer buffers of the params of a group that first step
together on one device are views into one pinned block: torch's pinned allocator rounds
each allocation up to a power of two, which per param could waste up to half of it.

Grads leave the device during backward: a post-accumulate-grad hook copies each param's
grad on the ``d2h`` side stream as soon as autograd has accumulated it, and remembers
which grad tensor it copied and its ``_version``. ``step()`` then, a few consecutive params at a time (``step_batches``): waits (on the
host) for their copies, steps their masters on the CPU, and issues the copies of the new
weights back on the ``h2d`` stream, so grad copies of later params and weight copies of
earlier ones run while the CPU steps these. The compute stream waits for the last
weight copy before ``step()`` returns: the next forward sees the new weights, and the
host never waits for the device except for the grads it reads.

Exactness where the peers are not: a param whose grad changed after its copy (another
micro-batch accumulated into it, ``clip_grad_norm_`` scaled it in place, the user
replaced it or set it without a backward) has another ``_version`` or identity at
``step()`` and is copied again there; each micro-batch's hook also copies the
accumulated grad afresh. GradScaler unscales in place without a new ``_version``: it
hands its scale to ``step()`` instead, which marks every copy stale (grad_scaler.py).
Edits through ``.data`` bypass the version counter and are not seen (as everywhere in
autograd). In a multi-process run (DDP) the grads are copied in ``step()`` only: DDP
reduces them in place after autograd's hooks have run.

No worker thread: the step cannot start before ``step()`` is called (clipping needs
every grad, and only the caller knows the last micro-batch; stepping during backward is
what breaks the peers' accumulation), and inside ``step()`` the host has nothing else to
do while the copies run on the device's side streams.

The master is not optimizer state (torch's state_dict holds none): it is read from the
param when first used and whenever the param was changed outside the optimizer (its
``_version`` or storage differs from after the optimizer's last write, e.g. a loaded
model checkpoint), and dropped with the placement at ``load_state_dict``, so a resumed
run starts from the loaded weights. fp32 params lose nothing by this; a bf16 model's
master restarts from the bf16 weights, exactly as a bf16 checkpoint does.

On a device type without a stream layer (the CPU) offload is a no-op with one warning
per optimizer: states stay with the params.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..codecs import encoded_states
from ..dtensor import is_dtensor
from .device import Placement, StepFn, counters_on, moved
from .streaming import consecutive_runs
from .streams import StreamLayer, cached_layer

HOST = torch.device("cpu")
STEP_BATCH_ELEMENTS = 1 << 22  # 16 MiB of fp32 master per CPU step call


@dataclass(eq=False)
class OffloadedParam:
    """The host side of one offloaded param."""

    master: torch.Tensor  # pinned fp32 weights the rule updates
    transfer: torch.Tensor  # pinned, the param's dtype: the grad comes in, new weights (if not fp32) go out
    grad_event: Any = None  # the last grad copy into ``transfer`` is done
    grad_source: Any = None  # weakref to the grad tensor that copy read
    grad_version: int = -1  # its _version then
    in_flight: torch.Tensor | None = None  # keeps that grad alive until the host has waited for the copy
    param_version: tuple[int, int] | None = None  # the param after the optimizer's last write; else re-read

    @property
    def nbytes(self) -> tuple[int, int]:
        """(master bytes, transfer buffer bytes)."""
        return self.master.numel() * 4, self.transfer.numel() * self.transfer.element_size()

    def grad_is_current(self, param: torch.Tensor) -> bool:
        grad = param.grad
        return self.grad_source is not None and self.grad_source() is grad and grad._version == self.grad_version


def param_version(param: torch.Tensor) -> tuple[int, int]:
    return param._version, param.data_ptr()


ALIGN = 64  # byte alignment of every view in the pinned block (a cache line; vector loads)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def _nbytes(param: torch.Tensor, dtype: torch.dtype) -> int:
    return param.numel() * torch.empty((), dtype=dtype).element_size()


def host_tensor(layer: StreamLayer, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A pinned host tensor of ``like``'s shape in ``dtype`` (made by the layer, so it is host memory)."""
    return layer.host_empty(_nbytes(like, dtype)).view(dtype).view(like.shape)


def host_records(layer: StreamLayer, params: list[torch.Tensor]) -> list[OffloadedParam]:
    """Each param's master (fp32) and transfer buffer (its dtype) as views into one pinned block."""
    sizes = [(_nbytes(p, torch.float32), _nbytes(p, p.dtype)) for p in params]
    block = layer.host_empty(sum(_aligned(a) + _aligned(b) for a, b in sizes))
    records, offset = [], 0
    for param, (master_bytes, transfer_bytes) in zip(params, sizes):
        views = []
        for dtype, nbytes in ((torch.float32, master_bytes), (param.dtype, transfer_bytes)):
            views.append(block[offset:offset + nbytes].view(dtype).view(param.shape))
            offset += _aligned(nbytes)
        records.append(OffloadedParam(*views))
    return records


def copies_in_backward() -> bool:
    """False in a multi-process run: DDP reduces grads in place after autograd's hooks (and
    its writes need not bump ``_version``), so the copies wait for step()."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def step_batches(members: list[tuple[torch.Tensor, Any]]) -> list[list[tuple[torch.Tensor, Any]]]:
    """Consecutive members stepped in one call, up to STEP_BATCH_ELEMENTS together (a larger
    one alone): one call per small param would cost more than its step, and batches small
    enough keep weight copies of earlier batches overlapping the CPU step of later ones."""
    runs = consecutive_runs([param.numel() for param, _ in members], STEP_BATCH_ELEMENTS)
    return [[members[i] for i in run] for run in runs]


def _on_grad_ready(placement_ref: weakref.ref, param: torch.Tensor) -> None:
    placement = placement_ref()  # the hook must not keep a dropped optimizer alive
    if placement is not None and copies_in_backward():
        placement.copy_grad(param)


def _remove(handles: dict) -> None:
    for handle in list(handles.values()):
        handle.remove()
    handles.clear()


class OffloadPlacement(Placement):
    name = "offload"

    def __init__(self, params: list[torch.Tensor], warn: Callable[[str], None]) -> None:
        self._params = params  # the group's: their host buffers share one pinned block per device
        self._warn = warn
        self._layers: dict[torch.device, StreamLayer | None] = {}
        self._records: dict[torch.Tensor, OffloadedParam] = {}
        self._hooks: dict[int, Any] = {}  # id(param) -> handle; removed when the placement goes
        self._copied_back: dict[torch.device, Any] = {}  # event: the last step's weight copies landed
        weakref.finalize(self, _remove, self._hooks)

    def _layer(self, device: torch.device) -> StreamLayer | None:
        return cached_layer(self._layers, device, lambda: self._warn(
            f"offload=True has no effect for parameters on {device.type}: offload keeps master weights and "
            f"states in host memory for parameters on a GPU, so they stay in {device.type} memory"))

    def offloads(self, param: torch.Tensor) -> bool:
        if self._layer(param.device) is None:
            return False
        if is_dtensor(param):
            raise ValueError("offload=True does not support DTensor (FSDP2) parameters; use paged=True to keep "
                             "their states in host memory")
        return True

    # -- Placement ------------------------------------------------------------------------
    def home(self, param: torch.Tensor) -> torch.device:
        return HOST if self.offloads(param) else param.device

    def settle(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        offloads = self.offloads(param)
        where = HOST if offloads else param.device
        for name, enc in encoded_states(state).items():
            if enc.device != where:
                state[name] = moved(enc, where)
        counters_on(state, where)
        if offloads:
            self._record(param)

    def location(self, param: torch.Tensor, state: dict[str, Any]) -> str:
        return "host" if param in self._records else "device"  # settled there

    def offload_bytes(self, params: list[torch.Tensor]) -> tuple[int, int, int]:
        records = [self._records[p] for p in params if p in self._records]
        return sum(r.nbytes[0] for r in records), sum(r.nbytes[1] for r in records), len(records)

    def take_over(self, old: Placement) -> None:
        """Keep the masters (and in-flight grad copies) of the placement this one replaces."""
        if not isinstance(old, OffloadPlacement):
            old.close()
            return
        records, layers, copied_back = dict(old._records), dict(old._layers), dict(old._copied_back)
        old.close()
        self._layers.update(layers)
        self._copied_back.update(copied_back)
        for param, record in records.items():
            self._records[param] = record
            self._hook(param, record)

    def close(self) -> None:
        _remove(self._hooks)
        self._records.clear()

    def grads_changed(self) -> None:
        for record in self._records.values():
            record.grad_source = None  # copied again in step()

    # -- grads ----------------------------------------------------------------------------
    def _record(self, param: torch.Tensor) -> OffloadedParam:
        record = self._records.get(param)
        if record is None:  # one block for this param and the others of the group about to step with it
            others = [p for p in self._params if p is not param and p.device == param.device
                      and p not in self._records and p.grad is not None]
            members = [param] + [p for p in others if self.offloads(p)]
            for member, new in zip(members, host_records(self._layers[param.device], members)):
                self._records[member] = new
                self._hook(member, new)
            record = self._records[param]
        return record

    def _hook(self, param: torch.Tensor, record: OffloadedParam) -> None:
        if param.requires_grad and param.is_leaf:  # else the grad is copied at step()
            handle = param.register_post_accumulate_grad_hook(
                lambda p, ref=weakref.ref(self): _on_grad_ready(ref, p))
            self._hooks[id(param)] = handle

    def copy_grad(self, param: torch.Tensor) -> None:
        """Start copying ``param``'s grad to its host buffer (after the work that produced it)."""
        record = self._records.get(param)
        if record is None or param.grad is None:
            return
        layer = self._layers[param.device]
        grad = param.grad
        if record.transfer.dtype != grad.dtype:  # torch keeps grads in the param's dtype; stay exact if not
            record.transfer = host_tensor(layer, param, grad.dtype)
        layer.wait(layer.d2h, layer.record(layer.compute, "grad_ready"), "grad_copy_waits")
        layer.copy(layer.d2h, record.transfer, grad, "grad_copy")
        record.grad_event = layer.record(layer.d2h, "grad_copied")
        record.grad_source, record.grad_version, record.in_flight = weakref.ref(grad), grad._version, grad

    # -- step -----------------------------------------------------------------------------
    def _ready(self, layer: StreamLayer, param: torch.Tensor) -> OffloadedParam:
        """``param``'s record with a current master and its grad landed on the host, as the master's .grad."""
        record = self._record(param)
        if record.param_version != param_version(param):  # new, or changed outside the optimizer
            record.master.copy_(param)
        if not record.grad_is_current(param):
            self.copy_grad(param)
        layer.host_wait(record.grad_event)
        record.in_flight = None
        grad = record.transfer
        record.master.grad = grad if grad.dtype == torch.float32 else grad.float()
        return record

    def run(self, params: list[torch.Tensor], states: list[dict[str, Any]], step_fn: StepFn) -> None:
        local: tuple[list, list] = ([], [])
        offloaded: dict[torch.device, list[tuple[torch.Tensor, dict[str, Any]]]] = {}
        for param, state in zip(params, states):
            if self.offloads(param):
                offloaded.setdefault(param.device, []).append((param, state))
            else:
                local[0].append(param)
                local[1].append(state)
        if local[0]:
            step_fn(*local)
        for device, members in offloaded.items():
            self._step_on_host(device, members, step_fn)

    def _step_on_host(self, device: torch.device, members: list[tuple[torch.Tensor, dict[str, Any]]],
                      step_fn: StepFn) -> None:
        layer = self._layers[device]
        if device in self._copied_back:  # the masters are rewritten below: the last copies from them are done
            layer.host_wait(self._copied_back[device])
        # weights are overwritten after the kernels issued so far (backward) have read them
        layer.wait(layer.h2d, layer.record(layer.compute, "step_start"), "copy_back_waits")
        for index, batch in enumerate(step_batches(members)):
            records = [self._ready(layer, param) for param, _ in batch]
            try:
                step_fn([r.master for r in records], [state for _, state in batch])
            finally:
                for record in records:
                    record.master.grad = None
            for (param, _), record in zip(batch, records):
                source = record.master
                if param.dtype != torch.float32:  # cast on the host; the transfer buffer is free until the next backward
                    record.transfer.copy_(record.master)
                    source = record.transfer
                    record.grad_source = None  # it holds weights now: a second step() copies the grad again
                layer.copy(layer.h2d, param, source, ("copy_back", index))
        copied_back = self._copied_back[device] = layer.record(layer.h2d, "copied_back")
        layer.wait(layer.compute, copied_back, "weights_ready")
        layer.finish()
        for param, _ in members:
            self._records[param].param_version = param_version(param)
