"""tightfit: memory-efficient optimizers, a memory planner and a benchmark CLI for fine-tuning."""

from .backward import InBackwardHandle, step_in_backward
from .codecs import CODECS, Codec, get_codec
from .memory_report import MemoryReport
from .names import OPTIMIZER_NAMES, create_optimizer, register_name
from .optimizer import TightfitOptimizer
from .optimizers import SGD, Adam, AdamW, Lion
from .optimizers_factored import CAME, Adafactor, SophiaG
from .rules import RULES

__version__ = "0.1.0"

__all__ = ["CAME", "CODECS", "OPTIMIZER_NAMES", "RULES", "SGD", "Adafactor", "Adam", "AdamW", "SophiaG", "Codec", "Lion", "TightfitOptimizer",
           "InBackwardHandle", "MemoryReport", "create_optimizer", "get_codec", "register_name", "step_in_backward", "__version__"]
