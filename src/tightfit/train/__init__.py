"""Fine-tuning with any tightfit optimizer (or a peer): data, model loading, methods
(full / LoRA / QLoRA), schedules, checkpoints with exact resume, and the loop."""

from .config import TrainConfig
from .errors import TrainInputError
from .loop import TrainResult, train

__all__ = ["TrainConfig", "TrainInputError", "TrainResult", "train"]
