"""One optimizer step on a CUDA GPU: tightfit (fused triton kernels) vs torch, bitsandbytes, torchao.

A Llama-3.1-8B-shaped parameter set in bfloat16 (hidden 4096, intermediate 14336, 8 KV
heads of 128, vocab 128256, untied head) -- by default the embedding, the head and
``--layers 4`` decoder layers (≈1.9B params), or all 32 with ``--layers 32`` when memory
allows -- with fixed random bf16 gradients. Every optimizer steps the same tensors, one
after the other, states freed in between. For each row:

* median ms/step over ``--steps`` timed steps (CUDA events) after ``--warmup`` steps;
* achieved GB/s over the minimum bytes a step must move (read param, grad and state,
  write param and state) and that as a fraction of a measured device-to-device copy;
* peak memory above params + grads, and the state bytes;
* whether a step (after warm-up) synchronised with the host (torch sync debug mode).

Rows run in order of value. Peers that cannot be imported are skipped with the reason
printed and recorded; an optimizer that fails is recorded as failed and the run goes on.
Writes step_gpu.csv and .md under --results (default benchmarks/results/; device, date and
versions on every row), after every row.

    python benchmarks/step_gpu.py [--layers 4] [--steps 20] [--warmup 5] [--results DIR] [--dry-run]
"""

from __future__ import annotations

import gc
import math
import statistics
import sys
from typing import Callable

import torch

from gpu_run import cuda_missing, parse_args, run_facts, selected
from result_tables import write_results
from state_sizes import state_bytes

LLAMA_31_8B = {"hidden": 4096, "intermediate": 14336, "kv_dim": 1024, "vocab": 128256}
FIELDS = ["optimizer", "status", "ms_per_step", "gb_per_s", "copy_fraction", "min_bytes_gb", "state_gb",
          "peak_over_params_gb", "host_sync", "params_b", "device", "date", "torch", "triton", "tightfit",
          "bitsandbytes", "torchao"]


def llama_shapes(layers: int) -> list[tuple[int, ...]]:
    """Parameter shapes of Llama-3.1-8B's embedding, head, final norm and ``layers`` decoder layers."""
    h, i, kv, v = (LLAMA_31_8B[k] for k in ("hidden", "intermediate", "kv_dim", "vocab"))
    layer = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i), (h,), (h,)]
    return [(v, h), (v, h), (h,)] + layer * layers


# --- optimizers -------------------------------------------------------------------------
# name -> factory(params) -> optimizer; a factory raising one of SKIP_ERRORS skips the row.

def _tightfit(cls_name: str, **options) -> Callable:
    def make(params):
        import tightfit
        return getattr(tightfit, cls_name)(params, **options)
    return make


def _bnb(cls_name: str) -> Callable:
    def make(params):
        import bitsandbytes.optim as bnb_optim
        return getattr(bnb_optim, cls_name)(params, lr=1e-4)
    return make


def _torchao(cls_name: str) -> Callable:
    def make(params):
        from torchao import optim as ao_optim
        return getattr(ao_optim, cls_name)(params, lr=1e-4)
    return make


# In order of value, so that a run cut short by its time budget has the targets' rows first
# (8/4-bit AdamW against the copy bandwidth, bitsandbytes and torchao).
OPTIMIZERS: dict[str, Callable] = {
    "tightfit AdamW 8bit": _tightfit("AdamW", lr=1e-4, state="8bit"),
    "bnb AdamW8bit": _bnb("AdamW8bit"),
    "torchao AdamW8bit": _torchao("AdamW8bit"),
    "tightfit AdamW 4bit": _tightfit("AdamW", lr=1e-4, state="4bit"),
    "torchao AdamW4bit": _torchao("AdamW4bit"),
    "torch AdamW fused": lambda p: torch.optim.AdamW(p, lr=1e-4, fused=True),
    "tightfit AdamW fp32": _tightfit("AdamW", lr=1e-4, state="fp32"),
    "tightfit AdamW 8bit + SR": _tightfit("AdamW", lr=1e-4, state="8bit", stochastic_rounding=True),
    "bnb PagedAdamW8bit": _bnb("PagedAdamW8bit"),
    "tightfit Lion 8bit": _tightfit("Lion", lr=1e-5, state="8bit"),
    "tightfit CAME 8bit": _tightfit("CAME", lr=1e-4, state="8bit"),
    "tightfit Adafactor + 8bit momentum": _tightfit("Adafactor", lr=1e-4, beta1=0.9, state="8bit"),
    "tightfit Adafactor": _tightfit("Adafactor", lr=1e-4),
    "tightfit Lion fp32": _tightfit("Lion", lr=1e-5, state="fp32"),
    "torch AdamW foreach": lambda p: torch.optim.AdamW(p, lr=1e-4, foreach=True),
}
SKIP_ERRORS = (ImportError, AttributeError, TypeError, ValueError)  # a peer missing or refusing this setup


# --- measurement ------------------------------------------------------------------------

def copy_bandwidth_gb_s(nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth (read + write counted), median of ``repeats``."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    return 2 * nbytes / statistics.median(times[2:]) / 1e9


def steps_sync(opt) -> str:
    """'none' when a step runs under sync debug mode 'error' without raising, else the error."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
        return "none"
    except RuntimeError as error:
        return f"sync: {str(error).splitlines()[0][:80]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")


def measure(name: str, factory: Callable, params: list[torch.Tensor], args, copy_gb_s: float) -> dict:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        opt = factory(params)
    except SKIP_ERRORS as error:
        print(f"skip {name}: {type(error).__name__}: {error}", flush=True)
        return {"optimizer": name, "status": f"skipped: {type(error).__name__}: {str(error)[:100]}"}
    for _ in range(args.warmup):
        opt.step()
    sync = steps_sync(opt)
    times = []
    for _ in range(args.steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        opt.step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    ms = statistics.median(times)
    states = state_bytes(opt)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in params)
    minimum = 2 * param_bytes + grad_bytes + 2 * states
    gb_s = minimum / (ms / 1e3) / 1e9
    peak = torch.cuda.max_memory_allocated() - base
    del opt
    gc.collect()
    row = {"optimizer": name, "status": "ok", "ms_per_step": f"{ms:.2f}", "gb_per_s": f"{gb_s:.0f}",
           "copy_fraction": f"{gb_s / copy_gb_s:.2f}", "min_bytes_gb": f"{minimum / 1e9:.2f}",
           "state_gb": f"{states / 1e9:.2f}", "peak_over_params_gb": f"{peak / 1e9:.2f}", "host_sync": sync}
    print(row, flush=True)
    return row


def dry_run(args) -> list[dict]:
    """Every optimizer built on small bf16 CPU params and stepped once: the rows' setup."""
    rows = []
    for name, factory in OPTIMIZERS.items():
        if not selected(name, args.only):
            continue
        params = [torch.randn(shape, dtype=torch.bfloat16) for shape in ((64, 96), (96,))]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        try:
            factory(params).step()
            rows.append({"optimizer": name, "status": "dry run: built and stepped on cpu"})
        except Exception as error:  # recorded, as a measured run records a failing peer
            rows.append({"optimizer": name, "status": f"skipped: {type(error).__name__}: {str(error)[:100]}"})
    return rows


def main(argv=None) -> int:
    args = parse_args(__doc__, argv, steps=20, warmup=5, add_arguments=lambda parser: parser.add_argument(
        "--layers", type=int, default=4, help="decoder layers of Llama-3.1-8B (32 = all)"))
    n_params = sum(math.prod(shape) for shape in llama_shapes(args.layers))
    if args.dry_run:
        common = run_facts(["triton", "tightfit", "bitsandbytes", "torchao"], dry_run=True,
                           params_b=f"{n_params / 1e9:.3f}")
        rows = dry_run(args)
        for row in rows:
            print(row, flush=True)
        write_results("step_gpu", FIELDS, rows, common, args.results)
        return 0
    if cuda_missing("step_gpu.py", "for CPU timings run benchmarks/step_cpu.py"):
        return 2

    torch.manual_seed(0)
    params = []
    for shape in llama_shapes(args.layers):
        p = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 0.02
        p.grad = torch.randn_like(p) * 1e-3
        params.append(p)
    common = run_facts(["triton", "tightfit", "bitsandbytes", "torchao"], params_b=f"{n_params / 1e9:.3f}")
    copy_gb_s = copy_bandwidth_gb_s()
    print(f"{n_params / 1e9:.2f}B bf16 params on {common['device']}; device copy {copy_gb_s:.0f} GB/s", flush=True)

    rows = [{"optimizer": "device-to-device copy", "status": "ok", "gb_per_s": f"{copy_gb_s:.0f}",
             "copy_fraction": "1.00"}]
    write_results("step_gpu", FIELDS, rows, common, args.results, quiet=True)
    for name, factory in OPTIMIZERS.items():
        if not selected(name, args.only):
            continue
        try:
            rows.append(measure(name, factory, params, args, copy_gb_s))
        except torch.cuda.OutOfMemoryError as error:
            print(f"skip {name}: out of memory", flush=True)
            rows.append({"optimizer": name, "status": f"out of memory: {str(error)[:80]}"})
        except Exception as error:  # one failing optimizer must not lose the other rows
            print(f"failed {name}: {type(error).__name__}: {error}", flush=True)
            rows.append({"optimizer": name, "status": f"failed: {type(error).__name__}: {str(error)[:100]}"})
        write_results("step_gpu", FIELDS, rows, common, args.results, quiet=True)  # kept if the budget runs out
    write_results("step_gpu", FIELDS, rows, common, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
