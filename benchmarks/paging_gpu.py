"""Paged optimizer states and updates inside backward on a CUDA GPU: full fine-tune steps.

A Llama-3.2-shaped causal LM (``--model 1b``: hidden 2048, 16 layers, ≈1.24B params;
``--model 3b``: hidden 3072, 28 layers, ≈3.2B; both vocab 128256, 8 KV heads, tied
embeddings) with random weights in bfloat16 takes full fine-tune steps (forward, backward,
optimizer) on random tokens. For AdamW with fp32 and 8-bit states, each in four modes --
on device, paged (``paged=True``), inside backward (``tightfit.step_in_backward``), paged
+ inside backward -- and bitsandbytes PagedAdamW8bit / PagedAdamW (on device mode only)
when it imports, one row records (rows in order of value, written after each one):

* median ms per iteration (forward + backward + update, CUDA events) after warm-up;
* peak ``torch.cuda.max_memory_allocated`` over the timed iterations, and the device
  memory NVML reports in use (bnb pages through CUDA managed memory, which torch's
  counters do not see: compare bnb rows by ``nvml_used_gb``);
* optimizer-state bytes on the device and in pinned host memory (``memory_report()``),
  and the device bytes a paged step borrows for its streaming buffers;

and two rows give the pinned host <-> device copy bandwidth, the floor of a paged step.

Writes paging_gpu.csv and .md under --results (default benchmarks/results/; device, date,
versions on every row). Exits 2 without CUDA; --dry-run checks the setup on the CPU.

    python benchmarks/paging_gpu.py [--model 1b] [--batch 4] [--seq 512] [--steps 5] [--warmup 2] [--dry-run]
"""

from __future__ import annotations

import gc
import statistics
import sys
from typing import Callable

import torch

from result_tables import write_results
from state_sizes import state_bytes
from gpu_run import cuda_missing, device_memory_used, llama_config, parse_args, run_facts, selected, timed_ms

# Llama-3.2 1B / 3B shapes (config.json of meta-llama/Llama-3.2-{1B,3B}).
MODELS = {
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32},
    "3b": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24},
}
COMMON_SHAPE = {"vocab_size": 128256, "num_key_value_heads": 8, "tie_word_embeddings": True,
                "max_position_embeddings": 8192}
ROPE_THETA = 500000.0
# --dry-run: the same architecture at toy size, stepped on the CPU
DRY_RUN_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "vocab_size": 512, "num_key_value_heads": 2, "tie_word_embeddings": True,
                 "max_position_embeddings": 128}
MODES = ("on device", "paged", "in backward", "paged + in backward")
FIELDS = ["optimizer", "mode", "status", "iter_ms", "peak_allocated_gb", "nvml_used_gb", "state_device_gb",
          "state_host_gb", "stream_buffer_gb", "gb_per_s", "params_b", "batch", "seq", "device", "date", "torch",
          "transformers", "tightfit", "bitsandbytes"]
GB = 1e9


def build_model(shape: dict, device: str = "cuda", dtype=torch.bfloat16) -> torch.nn.Module:
    """Random-init Llama-shaped LM built directly on ``device`` ("meta": shapes only)."""
    from transformers import LlamaForCausalLM

    config = llama_config(ROPE_THETA, **shape)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.config.use_cache = False
    return model.train()


# --- optimizers: name -> (factory(params, paged) or None where a mode does not apply) -----

def _tightfit(state: str) -> Callable:
    def make(params, paged: bool):
        import tightfit
        return tightfit.AdamW(params, lr=1e-5, state=state, paged=paged)
    return make


def _bnb(cls_name: str) -> Callable:
    def make(params, paged: bool):
        import bitsandbytes.optim as bnb_optim
        return getattr(bnb_optim, cls_name)(params, lr=1e-5)
    return make


# (optimizer name, mode, factory), in order of value: a run cut short by its time budget
# keeps the rows of the targets (paged 8-bit vs on device and vs bitsandbytes paged) first.
RUNS: list[tuple[str, str, Callable]] = [
    ("tightfit AdamW 8bit", "on device", _tightfit("8bit")),
    ("tightfit AdamW 8bit", "paged", _tightfit("8bit")),
    ("bnb PagedAdamW8bit", "paged", _bnb("PagedAdamW8bit")),
    ("tightfit AdamW 8bit", "paged + in backward", _tightfit("8bit")),
    ("tightfit AdamW 8bit", "in backward", _tightfit("8bit")),
    ("tightfit AdamW fp32", "on device", _tightfit("fp32")),
    ("tightfit AdamW fp32", "paged", _tightfit("fp32")),
    ("bnb PagedAdamW (32-bit)", "paged", _bnb("PagedAdamW")),
    ("tightfit AdamW fp32", "in backward", _tightfit("fp32")),
    ("tightfit AdamW fp32", "paged + in backward", _tightfit("fp32")),
]
assert {mode for _, mode, _ in RUNS} == set(MODES)


# --- measurement ----------------------------------------------------------------------

def nvml_used() -> str:
    used, source = device_memory_used()
    return f"{used / GB:.2f}" + ("" if source == "nvml" else f" ({source})") if used is not None else source


def pcie_rows(nbytes: int = 1 << 30) -> list[dict]:
    """Pinned host <-> device copy bandwidth: the floor a paged step cannot beat."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    rows = []
    for name, run in (("PCIe host to device (pinned)", lambda: device.copy_(host, non_blocking=True)),
                      ("PCIe device to host (pinned)", lambda: host.copy_(device, non_blocking=True))):
        ms = timed_ms(run, repeats=5)
        rows.append({"optimizer": name, "status": "ok", "iter_ms": f"{ms:.2f}", "gb_per_s": f"{nbytes / ms / 1e6:.1f}"})
        print(rows[-1], flush=True)
    del host, device
    return rows


def free_memory() -> None:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def iterate(model, opt, handle, tokens) -> None:
    loss = model(input_ids=tokens, labels=tokens).loss
    if handle is not None:
        handle.backward(loss)  # updates happen inside backward
        return
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(name: str, mode: str, factory: Callable, model, tokens, args) -> dict:
    row = {"optimizer": name, "mode": mode}
    free_memory()
    try:
        opt = factory(model.parameters(), "paged" in mode and name.startswith("tightfit"))
    except (ImportError, AttributeError, RuntimeError, TypeError, ValueError) as error:
        print(f"skip {name} ({mode}): {type(error).__name__}: {error}", flush=True)
        return {**row, "status": f"skipped: {type(error).__name__}: {str(error)[:100]}"}
    handle = None
    if "in backward" in mode:
        import tightfit
        handle = tightfit.step_in_backward(model, opt)
    try:
        for _ in range(args.warmup):
            iterate(model, opt, handle, tokens)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            iterate(model, opt, handle, tokens)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        row.update({"status": "ok", "iter_ms": f"{statistics.median(times):.1f}",
                    "peak_allocated_gb": f"{torch.cuda.max_memory_allocated() / GB:.2f}", "nvml_used_gb": nvml_used()})
        if hasattr(opt, "memory_report"):
            report = opt.memory_report()
            row.update({"state_device_gb": f"{report.device_bytes / GB:.3f}",
                        "state_host_gb": f"{report.host_bytes / GB:.3f}",
                        "stream_buffer_gb": f"{report.stream_buffer_bytes / GB:.3f}"})
        else:  # bnb: paged states are managed memory, outside torch's counters
            row.update({"state_device_gb": f"{state_bytes(opt) / GB:.3f} (managed)", "state_host_gb": "n/a"})
    except torch.cuda.OutOfMemoryError as error:
        row.update({"status": f"out of memory: {str(error).splitlines()[0][:80]}"})
    except Exception as error:  # one failing run must not lose the other rows
        row.update({"status": f"failed: {type(error).__name__}: {str(error).splitlines()[0][:100]}"})
    finally:
        if handle is not None:
            handle.remove()
        model.zero_grad(set_to_none=True)
        del opt
    print(row, flush=True)
    return row


def dry_run(args) -> tuple[list[dict], int]:
    """The configuration under this transformers' API (meta device: shapes only), and every
    run's optimizer and mode for one iteration of the toy-size model on the CPU."""
    meta = build_model({**MODELS[args.model], **COMMON_SHAPE}, device="meta")
    n_params = sum(p.numel() for p in meta.parameters())
    print(f"{args.model}: {n_params / 1e9:.3f}B params (meta device)", flush=True)
    model = build_model(DRY_RUN_SHAPE, device="cpu", dtype=torch.float32)
    tokens = torch.randint(0, DRY_RUN_SHAPE["vocab_size"], (2, 16))
    rows = []
    for name, mode, factory in RUNS:
        if not selected(name, args.only):
            continue
        handle = None
        try:
            opt = factory(model.parameters(), "paged" in mode and name.startswith("tightfit"))
            if "in backward" in mode:
                import tightfit
                handle = tightfit.step_in_backward(model, opt)
            iterate(model, opt, handle, tokens)
            rows.append({"optimizer": name, "mode": mode, "status": "dry run: built and stepped on cpu"})
        except Exception as error:  # recorded, as a measured run records a failing peer
            rows.append({"optimizer": name, "mode": mode,
                         "status": f"skipped: {type(error).__name__}: {str(error).splitlines()[0][:100]}"})
        finally:
            if handle is not None:
                handle.remove()
            model.zero_grad(set_to_none=True)
        print(rows[-1], flush=True)
    return rows, n_params


def main(argv=None) -> int:
    def add_arguments(parser):
        parser.add_argument("--model", choices=sorted(MODELS), default="1b")
        parser.add_argument("--batch", type=int, default=4)
        parser.add_argument("--seq", type=int, default=512)
    args = parse_args(__doc__, argv, steps=5, warmup=2, add_arguments=add_arguments)
    modules = ["transformers", "tightfit", "bitsandbytes"]
    if args.dry_run:
        rows, n_params = dry_run(args)
        write_results("paging_gpu", FIELDS, rows, run_facts(modules, dry_run=True, params_b=f"{n_params / 1e9:.3f}",
                                                             batch=args.batch, seq=args.seq), args.results)
        return 0
    if cuda_missing("paging_gpu.py", "paging streams optimizer states between pinned host memory and a GPU, "
                    "so there is nothing to measure on CPU"):
        return 2

    torch.manual_seed(0)
    model = build_model({**MODELS[args.model], **COMMON_SHAPE})
    tokens = torch.randint(0, COMMON_SHAPE["vocab_size"], (args.batch, args.seq), device="cuda")
    n_params = sum(p.numel() for p in model.parameters())
    common = run_facts(modules, params_b=f"{n_params / 1e9:.3f}", batch=args.batch, seq=args.seq)
    print(f"{n_params / 1e9:.2f}B bf16 params on {common['device']}", flush=True)
    rows = pcie_rows()
    for name, mode, factory in RUNS:
        if not selected(name, args.only):
            continue
        rows.append(measure(name, mode, factory, model, tokens, args))
        write_results("paging_gpu", FIELDS, rows, common, args.results, quiet=True)  # kept if the budget runs out
    write_results("paging_gpu", FIELDS, rows, common, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
