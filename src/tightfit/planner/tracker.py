"""A tracker of live tensor bytes, the same for real tensors and for fake ones.

``LiveBytesTracker`` is a ``TorchDispatchMode``: every tensor an operator returns is
recorded by its *storage* (so views and in-place results are not counted twice) with
the storage's ``nbytes``; a ``weakref.finalize`` on the storage object releases the bytes
when the storage dies. ``current`` is the sum over live storages, ``peak`` its maximum,
and ``phase(name)`` records the peak reached inside a phase (forward, backward, step).
Tensors that exist before the tracker starts (parameters, inputs) are added with
``track``.

With ``answer_scalar_reads=True`` (fake tensors), reads of a tensor's value
(``aten._local_scalar_dense``: ``.item()``, ``bool(t)``, ``float(t)``) are answered with 1
of the tensor's dtype instead of failing: the optimizers read values only for control
flow (finite-gradient check, step counter, RMS for a step size), never for the size of a
tensor, so allocations are the same as with real data.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_SCALAR_READ = torch.ops.aten._local_scalar_dense.default


class LiveBytesTracker(TorchDispatchMode):
    """Peak and current bytes of live tensor storages created while active."""

    def __init__(self, answer_scalar_reads: bool = False) -> None:
        super().__init__()
        self.answer_scalar_reads = answer_scalar_reads
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self.phase_peaks: dict[str, int] = {}
        self._phase: str | None = None

    # -- accounting -----------------------------------------------------------------
    def track(self, tensors) -> None:
        """Count tensors that already exist (parameters, buffers, inputs)."""
        for t in tensors:
            self._add(t)

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._live:
            return
        nbytes = storage.nbytes()
        self._live[key] = nbytes
        weakref.finalize(storage, self._release, key)
        self.current += nbytes
        if self.current > self.peak:
            self.peak = self.current
        if self._phase is not None and self.current > self.phase_peaks[self._phase]:
            self.phase_peaks[self._phase] = self.current

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Record the peak reached inside this block under ``phase_peaks[name]``."""
        previous, self._phase = self._phase, name
        self.phase_peaks[name] = max(self.phase_peaks.get(name, 0), self.current)
        try:
            yield
        finally:
            self._phase = previous

    # -- dispatch -------------------------------------------------------------------
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """Do not wrap ``__torch_dispatch__`` in ``torch._dynamo.disable``: the tracker never
        runs under torch.compile, and the wrapper imports torch._dynamo (~1.5 s) on first use."""
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.answer_scalar_reads and func is _SCALAR_READ:
            dtype = args[0].dtype
            return True if dtype is torch.bool else (1.0 if dtype.is_floating_point else 1)
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._add(leaf)
        return out
