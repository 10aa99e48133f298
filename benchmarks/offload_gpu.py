"""ZeRO-Offload on a CUDA GPU: a Llama full fine-tune with the optimizer stepping on the host.

A Llama-3.2-1B-shaped causal LM (paging_gpu.py's shapes: hidden 2048, 16 layers, vocab
128256, tied embeddings; ``--layers`` keeps fewer blocks) with random weights in bfloat16
takes full fine-tune iterations (forward, backward, optimizer step) on random tokens. One
row per optimizer, in order of value, written after each one:

* ``tightfit AdamW 8bit offload`` / ``fp32 offload``: ``tightfit.AdamW(..., offload=True)``:
  fp32 master weights and states on the host, grads copied during backward, the CPU step
  overlapped with the copies (placement/offload.py);
* ``torchao CPUOffloadOptimizer``: torchao's offload wrapper around torch's fused CPU AdamW
  (its host copies are in the param dtype: bf16 params are stepped in bf16, no fp32 master);
* ``DeepSpeedCPUAdam offload``: DeepSpeed's CPU Adam over fp32 pinned host masters, grads
  and weights copied with blocking copies around the step (a plain loop: the full
  ``deepspeed.initialize`` ZeRO-Offload engine needs a distributed launch). Skipped, with
  the reason, when deepspeed does not import or cannot build its CPU Adam;
* ``tightfit AdamW 8bit on device``: no offload, the reference for device memory.

Columns: median ms per iteration (CUDA events around forward + backward + step, the device
synchronised at the end), median ms spent inside ``step()`` (host clock, then a device
sync), peak ``torch.cuda.max_memory_allocated`` over the timed iterations, and the bytes
the optimizer keeps in host memory (tightfit: ``memory_report().host_bytes``; the peers:
their host tensors summed).

Writes offload_gpu.csv and .md under --results (default benchmarks/results/; device, date,
versions on every row). Exits 2 without CUDA; --dry-run checks the setup on the CPU.

    python benchmarks/offload_gpu.py [--layers 16] [--batch 2] [--seq 512] [--steps 3] [--warmup 1] [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Callable

import torch

from gpu_run import cuda_missing, parse_args, run_facts, selected
from paging_gpu import COMMON_SHAPE, DRY_RUN_SHAPE, MODELS, build_model, free_memory, nvml_used
from result_tables import write_results

FIELDS = ["optimizer", "status", "iter_ms", "step_ms", "peak_allocated_gb", "nvml_used_gb", "host_gb",
          "params_b", "layers", "batch", "seq", "device", "date", "torch", "transformers", "tightfit", "torchao",
          "deepspeed"]
GB = 1e9
QUICK = {"layers": 2, "steps": 2, "warmup": 1}  # ~0.37B params (half of it the embedding): the quick run's ~30 s


# --- optimizers: name -> factory(params) -------------------------------------------------

def _tightfit(state: str, offload: bool) -> Callable:
    def make(params):
        import tightfit
        return tightfit.AdamW(params, lr=1e-5, state=state, offload=offload)
    return make


def _torchao(params):
    try:
        from torchao.optim import CPUOffloadOptimizer
    except ImportError:  # torchao < 0.13
        from torchao.prototype.low_bit_optim import CPUOffloadOptimizer
    return CPUOffloadOptimizer(params, torch.optim.AdamW, lr=1e-5)


class DeepSpeedOffload:
    """DeepSpeedCPUAdam on fp32 pinned host masters; grads in and weights out by blocking copies."""

    def __init__(self, params) -> None:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        self.params = list(params)
        self.masters = [torch.empty(p.shape, dtype=torch.float32, pin_memory=True).copy_(p.detach())
                        for p in self.params]
        for master in self.masters:
            master.grad = torch.empty_like(master, pin_memory=True)
        self.opt = DeepSpeedCPUAdam(self.masters, lr=1e-5)

    @torch.no_grad()
    def step(self) -> None:
        for p, master in zip(self.params, self.masters):
            master.grad.copy_(p.grad)
        self.opt.step()
        for p, master in zip(self.params, self.masters):
            p.copy_(master, non_blocking=True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


# In order of value: a run cut short by its budget keeps the comparison rows first.
RUNS: list[tuple[str, Callable]] = [
    ("tightfit AdamW 8bit offload", _tightfit("8bit", True)),
    ("torchao CPUOffloadOptimizer (AdamW fused)", _torchao),
    ("tightfit AdamW 8bit on device", _tightfit("8bit", False)),
    ("DeepSpeedCPUAdam offload", DeepSpeedOffload),  # its CPU Adam is compiled on first use
    ("tightfit AdamW fp32 offload", _tightfit("fp32", True)),
]


# --- measurement ----------------------------------------------------------------------

def host_bytes(opt) -> int:
    """Bytes the optimizer keeps on the host: tightfit's report, else its host tensors summed."""
    if hasattr(opt, "memory_report"):
        return opt.memory_report().host_bytes
    tensors = {}
    if isinstance(opt, DeepSpeedOffload):
        tensors.update({id(t): t for m in opt.masters for t in (m, m.grad)})
        inner = [opt.opt]
    else:  # torchao: host params (and their grads) and one optimizer per param
        tensors.update({id(t): t for p in opt.param_d2h_map.values() for t in (p, p.grad) if t is not None})
        inner = list(opt.optim_dict.values())
    for o in inner:
        tensors.update({id(t): t for s in o.state.values() for t in s.values()
                        if torch.is_tensor(t) and t.device.type == "cpu"})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def iterate(model, opt, tokens) -> float:
    """One iteration; the milliseconds spent in step() (host clock, then a device sync)."""
    model(input_ids=tokens, labels=tokens).loss.backward()
    start = time.perf_counter()
    opt.step()
    torch.cuda.synchronize()
    step_ms = (time.perf_counter() - start) * 1e3
    opt.zero_grad(set_to_none=True)
    return step_ms


def measure(name: str, factory: Callable, model, tokens, args) -> dict:
    row = {"optimizer": name}
    free_memory()
    try:
        opt = factory(model.parameters())
    except Exception as error:  # a peer that is missing or cannot build: the row says why
        print(f"skip {name}: {type(error).__name__}: {error}", flush=True)
        return {**row, "status": f"skipped: {type(error).__name__}: {str(error).splitlines()[0][:120]}"}
    try:
        for _ in range(args.warmup):
            iterate(model, opt, tokens)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        iters, steps = [], []
        for _ in range(args.steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            steps.append(iterate(model, opt, tokens))
            end.record()
            end.synchronize()
            iters.append(start.elapsed_time(end))
        row.update({"status": "ok", "iter_ms": f"{statistics.median(iters):.1f}",
                    "step_ms": f"{statistics.median(steps):.1f}",
                    "peak_allocated_gb": f"{torch.cuda.max_memory_allocated() / GB:.2f}", "nvml_used_gb": nvml_used(),
                    "host_gb": f"{host_bytes(opt) / GB:.2f}"})
    except torch.cuda.OutOfMemoryError as error:
        row["status"] = f"out of memory: {str(error).splitlines()[0][:80]}"
    except Exception as error:  # one failing run must not lose the other rows
        row["status"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    finally:
        model.zero_grad(set_to_none=True)
        del opt
    print(row, flush=True)
    return row


def dry_run(args) -> tuple[list[dict], int]:
    """The configuration (meta device: shapes only), then each tightfit row for one iteration
    of the toy-size model on the CPU (offload is a no-op there); the peers need CUDA and are
    only imported."""
    meta = build_model(shape(args), device="meta")
    n_params = sum(p.numel() for p in meta.parameters())
    print(f"{args.layers} layers: {n_params / 1e9:.3f}B params (meta device)", flush=True)
    model = build_model(DRY_RUN_SHAPE, device="cpu", dtype=torch.float32)
    tokens = torch.randint(0, DRY_RUN_SHAPE["vocab_size"], (2, 16))
    rows = []
    for name, factory in RUNS:
        if not selected(name, args.only):
            continue
        try:
            if name.startswith("tightfit"):
                opt = factory(model.parameters())
                model(input_ids=tokens, labels=tokens).loss.backward()
                opt.step()
                status = "dry run: built and stepped on cpu"
            else:
                __import__("torchao.optim" if "torchao" in name else "deepspeed.ops.adam")
                status = "dry run: imports (needs CUDA to build)"
        except Exception as error:
            status = f"skipped: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
        finally:
            model.zero_grad(set_to_none=True)
        rows.append({"optimizer": name, "status": status})
        print(rows[-1], flush=True)
    return rows, n_params


def shape(args) -> dict:
    return {**MODELS["1b"], **COMMON_SHAPE, "num_hidden_layers": args.layers}


def main(argv=None) -> int:
    def add_arguments(parser):
        parser.add_argument("--layers", type=int, default=MODELS["1b"]["num_hidden_layers"],
                            help="decoder blocks of the 1B shape [16: Llama-3.2-1B]")
        parser.add_argument("--batch", type=int, default=2)
        parser.add_argument("--seq", type=int, default=512)
        parser.add_argument("--quick", action="store_true",
                            help=f"{QUICK['layers']} layers, {QUICK['warmup']} warm-up + {QUICK['steps']} timed steps")
    args = parse_args(__doc__, argv, steps=3, warmup=1, add_arguments=add_arguments)
    if args.quick:
        args.layers, args.steps, args.warmup = QUICK["layers"], QUICK["steps"], QUICK["warmup"]
    modules = ["transformers", "tightfit", "torchao", "deepspeed"]
    if args.dry_run:
        rows, n_params = dry_run(args)
        write_results("offload_gpu", FIELDS, rows, run_facts(modules, dry_run=True, params_b=f"{n_params / 1e9:.3f}",
                                                              layers=args.layers, batch=args.batch, seq=args.seq),
                      args.results)
        return 0
    if cuda_missing("offload_gpu.py", "offload moves the optimizer step from a GPU to the host, so there is "
                    "nothing to measure on a CPU"):
        return 2
    torch.manual_seed(0)
    model = build_model(shape(args))
    tokens = torch.randint(0, COMMON_SHAPE["vocab_size"], (args.batch, args.seq), device="cuda")
    n_params = sum(p.numel() for p in model.parameters())
    common = run_facts(modules, params_b=f"{n_params / 1e9:.3f}", layers=args.layers, batch=args.batch, seq=args.seq)
    print(f"{n_params / 1e9:.2f}B bf16 params on {common['device']}, {torch.get_num_threads()} CPU threads", flush=True)
    rows = []
    for name, factory in RUNS:
        if not selected(name, args.only):
            continue
        rows.append(measure(name, factory, model, tokens, args))
        write_results("offload_gpu", FIELDS, rows, common, args.results, quiet=True)  # kept if the budget runs out
    write_results("offload_gpu", FIELDS, rows, common, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
