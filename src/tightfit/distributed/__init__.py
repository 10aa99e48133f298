"""tightfit under torch.distributed: FSDP2 (DTensor) params, DDP, sharded checkpoints.

- ``shards``: what a DTensor param's states look like (elementwise states follow the
  param's local shard; reduced statistics are kept whole on every rank).
- ``step``: stepping DTensor params, mesh by mesh (meshes compared by equality, so the
  tutorial's per-block ``fully_shard`` calls share one; HSDP and TP + FSDP groups may
  span several meshes): elementwise rules on local shards through the usual
  implementations; rules that reduce across elements (Adafactor, CAME) on DTensors, so
  the reductions span the whole parameter exactly as in one process.
- ``checkpoint``: ``sharded_state_dict`` / ``load_sharded_state_dict`` for
  torch.distributed.checkpoint (reshardable), and ``full_state_dict``.
"""

from .checkpoint import full_state_dict, load_sharded_state_dict, sharded_state_dict
from .shards import is_dtensor, local_tensor, state_shape

__all__ = ["full_state_dict", "is_dtensor", "load_sharded_state_dict", "local_tensor", "sharded_state_dict",
           "state_shape"]
