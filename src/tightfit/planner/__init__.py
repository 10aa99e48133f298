"""Memory planner: what one fine-tuning step needs, before you start (issue #6).

    >>> from tightfit.planner import plan
    >>> p = plan("meta-llama/Llama-3.1-8B", method="qlora", optim="paged_adamw_8bit", gpu="24GiB",
    ...          checkpointing=True)
    >>> p.fits, p.device_total, [c.name for c in p.components]
    >>> p.to_dict()                      # what `tightfit plan --format json` prints

Modules: model_facts (configs -> parameter shapes), components (weights, masters,
gradients, optimizer state via tightfit.state_bytes), activations (per-block saved
tensors, logits/loss, the step timeline), step_temporaries, optimizer_specs (tightfit,
paged_*, torch:, bnb: names), gpus/units, advice, and simulate/tracker (one real step
on fake or real tensors under a live-bytes tracker). Nothing here imports transformers
unless a simulation runs or a hub id is fetched.
"""

from .api import Component, Plan, plan
from .model_facts import ModelFacts, load_model_facts

__all__ = ["Component", "ModelFacts", "Plan", "load_model_facts", "plan"]
