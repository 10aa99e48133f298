"""The planner against the GPU's own count: ``tightfit plan``'s peak vs
``torch.cuda.max_memory_allocated`` of the same training step on a CUDA GPU.

A random-init model of the planner's bundled Llama-3.2-1B config takes the step the planner
models (``tightfit.planner.simulate.run_step``: forward with labels, backward, optimizer
step or updates inside backward, ``zero_grad(set_to_none=True)``; 16-bit full fine-tunes
step fp32 masters). The first step creates the optimizer state; the peak is reset and the
second step is measured. The optimizer is the one ``tightfit train`` builds for the name
(``tightfit.train.peers.build_optimizer``), so the fused kernels and real paging run, as
``plan(..., gpu=...)`` assumes. Predicted is ``plan(...).peak_allocated``: it leaves out the
CUDA context and allocator slack, which ``max_memory_allocated`` does not count either.

Target (issue 15): every case within ±5% of the measured peak. Writes planner_gpu.csv
and .md under --results, after every case. Exits 2 without CUDA; --dry-run predicts every
case and steps each on a toy-size model on the CPU.

    python benchmarks/planner_gpu.py [--batch 4] [--seq 512] [--quick] [--dry-run]
"""

from __future__ import annotations

import contextlib
import gc
import importlib.resources
import json
import sys
from dataclasses import dataclass

import torch

from gpu_run import cuda_missing, parse_args, run_facts, selected
from result_tables import write_results

MODEL = "Llama-3.2-1B"
GPU = "h200"  # the planner's GPU entry: its step temporaries (fused kernels) and capacity
LORA_RANK = 16
TARGET = 0.05
DRY_RUN_CONFIG = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": True,
                  "max_position_embeddings": 128}
FIELDS = ["case", "status", "predicted_gb", "measured_gb", "error", "method", "optim", "dtype", "checkpointing",
          "in_backward", "batch", "seq", "model", "device", "date", "torch", "transformers", "tightfit",
          "bitsandbytes"]
GB = 1e9


@dataclass(frozen=True)
class Case:
    method: str
    optim: str
    dtype: str = "bf16"
    checkpointing: bool = False
    in_backward: bool = False
    quick: bool = False  # also in the --quick run

    @property
    def name(self) -> str:
        extras = [x for x, on in (("ckpt", self.checkpointing), ("in-backward", self.in_backward)) if on]
        return "-".join([self.method, self.optim, self.dtype, *extras])


# The matrix of issue 15 (method x optimizer x precision x checkpointing x updates in backward),
# the --quick subset first.
CASES = [
    Case("full", "adamw_8bit", "bf16", quick=True),
    Case("full", "paged_adamw_8bit", "bf16", quick=True),
    Case("lora", "adamw_32bit", "bf16", quick=True),
    Case("qlora", "paged_adamw_8bit", "bf16", checkpointing=True, quick=True),
    Case("full", "adamw_8bit", "fp32", in_backward=True),  # fp32: in-backward hooks need the stepped params' own grads
    Case("full", "adamw_32bit", "fp32"),
    Case("full", "adamw_4bit", "bf16", checkpointing=True),
    Case("lora", "adamw_8bit", "fp32", checkpointing=True),
]


def predicted_bytes(case: Case, facts, batch: int, seq: int) -> int:
    from tightfit.planner.api import plan

    return plan(facts, gpu=GPU, method=case.method, optim=case.optim, batch=batch, seq=seq, lora_rank=LORA_RANK,
                checkpointing=case.checkpointing, in_backward=case.in_backward, dtype=case.dtype,
                advise=False).peak_allocated


class NoPhases:
    """``run_step`` names its phases; the GPU's allocator keeps the one peak we read."""

    def phase(self, name: str):
        return contextlib.nullcontext()


def enable_checkpointing(model) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def measured_bytes(case: Case, config: dict, batch: int, seq: int, device: str) -> int | None:
    """Peak allocated bytes of the second step on ``device`` (None on the CPU: no counter)."""
    from tightfit.backward import step_in_backward
    from tightfit.planner.lora import apply_lora
    from tightfit.planner.simulate import DTYPES, build_model, run_step
    from tightfit.train.peers import build_optimizer

    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(config, DTYPES[case.dtype])
    if case.method == "qlora":
        from tightfit.planner.qlora import quantize_nf4
        quantize_nf4(model)
    trainable = apply_lora(model, LORA_RANK) if case.method != "full" else list(model.parameters())
    if case.checkpointing:
        enable_checkpointing(model)
        if case.method != "full":
            model.enable_input_require_grads()
    pairs = None
    if case.method == "full" and case.dtype != "fp32":  # bf16 weights stepped through fp32 masters
        pairs = [(p, torch.nn.Parameter(p.detach().float())) for p in trainable]
        trainable = [master for _, master in pairs]
    optimizer = build_optimizer(case.optim, trainable, lr=1e-5)
    handle = step_in_backward(trainable, optimizer) if case.in_backward else None
    tokens = torch.randint(0, config["vocab_size"], (batch, seq), device=device)
    try:
        run_step(model, optimizer, tokens, in_backward=case.in_backward, tracker=NoPhases(), masters=pairs)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        run_step(model, optimizer, tokens, in_backward=case.in_backward, tracker=NoPhases(), masters=pairs)
        if device != "cuda":
            return None
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    finally:
        if handle is not None:
            handle.remove()
        del model, optimizer, trainable, pairs, tokens
        if device == "cuda":
            gc.collect()
            torch.cuda.empty_cache()


def row_for(case: Case, facts, config: dict, args, device: str) -> dict:
    row = {"case": case.name, "method": case.method, "optim": case.optim, "dtype": case.dtype,
           "checkpointing": case.checkpointing, "in_backward": case.in_backward}
    try:
        predicted = predicted_bytes(case, facts, args.batch, args.seq)
        row["predicted_gb"] = f"{predicted / GB:.3f}"
        measured = measured_bytes(case, config, *((1, 8) if args.dry_run else (args.batch, args.seq)), device)
    except torch.cuda.OutOfMemoryError as error:
        return {**row, "status": f"out of memory: {str(error).splitlines()[0][:80]}"}
    except Exception as error:  # e.g. bitsandbytes missing for QLoRA: recorded, the run goes on
        return {**row, "status": f"failed: {type(error).__name__}: {str(error).splitlines()[0][:100]}"}
    if measured is None:
        return {**row, "status": "dry run: predicted, stepped on cpu at toy size"}
    return {**row, "status": "ok", "measured_gb": f"{measured / GB:.3f}", "error": f"{predicted / measured - 1:+.4f}"}


def main(argv=None) -> int:
    def add_arguments(parser):
        parser.add_argument("--batch", type=int, default=4)
        parser.add_argument("--seq", type=int, default=512)
        parser.add_argument("--quick", action="store_true", help="only the cases marked quick")
    args = parse_args(__doc__, argv, steps=1, warmup=0, add_arguments=add_arguments)
    if not args.dry_run and cuda_missing("planner_gpu.py", "it compares the plan with max_memory_allocated"):
        return 2
    from tightfit.planner.model_facts import facts_from_config

    bundled = json.loads((importlib.resources.files("tightfit.planner") / "configs" / f"{MODEL}.json").read_text())
    facts = facts_from_config(bundled, MODEL, "bundled config")
    config = DRY_RUN_CONFIG if args.dry_run else {k: v for k, v in bundled.items() if not k.startswith("_")}
    device = "cpu" if args.dry_run else "cuda"
    common = run_facts(["transformers", "tightfit", "bitsandbytes"], dry_run=args.dry_run, batch=args.batch,
                       seq=args.seq, model=f"{MODEL} (random init)")
    rows = []
    for case in CASES:
        if (args.quick and not case.quick) or not selected(case.name, args.only):
            continue
        rows.append(row_for(case, facts, config, args, device))
        print(rows[-1], flush=True)
        write_results("planner_gpu", FIELDS, rows, common, args.results, quiet=True)  # kept if the budget runs out
    write_results("planner_gpu", FIELDS, rows, common, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
