"""The same training run under several optimizers, side by side (``tightfit bench``)."""

from .presets import DEFAULT_OPTIMS, PRESETS
from .runner import BenchRun, resolve_optims, run_bench

__all__ = ["DEFAULT_OPTIMS", "PRESETS", "BenchRun", "resolve_optims", "run_bench"]
