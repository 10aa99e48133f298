"""What every GPU benchmark script shares: its command line, the CUDA check, run facts, and
the few library calls whose spelling differs between the versions it meets (the GPU
image's torch 2.11 / transformers 5.17, a developer's newer or older ones)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

from result_tables import RESULTS


def version_of(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except Exception as error:  # not installed, or broken: the row says so
        return f"unavailable ({type(error).__name__})"


def parse_args(doc: str, argv, *, steps: int, warmup: int,
               add_arguments: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    """The script's own arguments plus --steps, --warmup, --only (name substrings),
    --results (where the tables go) and --dry-run (set everything up on the CPU, measure nothing)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--only", nargs="*", help="substrings of the optimizer names to run")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"folder for the result tables [{RESULTS}]")
    parser.add_argument("--dry-run", action="store_true",
                        help="no CUDA needed: build every configuration and optimizer on tiny CPU tensors, "
                             "write the tables with status 'dry run', measure nothing")
    args = parser.parse_args(argv)
    for name in ("steps", "warmup"):
        if getattr(args, name) < (1 if name == "steps" else 0):
            parser.error(f"--{name} {getattr(args, name)} must be >= {1 if name == 'steps' else 0}")
    if args.dry_run:
        torch.set_num_threads(1)  # toy tensors: more threads only wait for each other on a shared CPU
    return args


def cuda_missing(script: str, why: str) -> bool:
    """True (after saying why on stderr) when there is no CUDA GPU to measure on."""
    if torch.cuda.is_available():
        return False
    print(f"{script} needs a CUDA GPU (torch.cuda.is_available() is False): {why}; "
          "--dry-run checks its setup on the CPU", file=sys.stderr)
    return True


def selected(name: str, only: list[str] | None) -> bool:
    return not only or any(s.lower() in name.lower() for s in only)


def run_facts(modules: list[str], dry_run: bool = False, **extra) -> dict:
    """Device, date and versions for every row of a result table."""
    device = "cpu (dry run: nothing measured)" if dry_run else torch.cuda.get_device_name()
    facts = {**extra, "device": device, "date": datetime.date.today().isoformat(), "torch": torch.__version__}
    facts.update({module: version_of(module) for module in modules})
    return facts


def device_memory_used() -> tuple[int | None, str]:
    """Device memory in use as nvidia-smi counts it (every process and allocator, CUDA
    managed memory too), and where the number came from. ``torch.cuda.device_memory_used``
    (NVML, torch >= 2.6) when it exists and works; else cudaMemGetInfo's total - free."""
    query = getattr(torch.cuda, "device_memory_used", None)
    if query is not None:
        try:
            return int(query()), "nvml"
        except Exception:  # no pynvml / NVML library in this environment
            pass
    try:
        free, total = torch.cuda.mem_get_info()
        return int(total - free), "cudaMemGetInfo"
    except Exception as error:
        return None, f"unavailable ({type(error).__name__})"


def llama_config(rope_theta: float, **fields):
    """A ``LlamaConfig`` with rotary base ``rope_theta`` under either transformers API:
    5.x keeps it in ``rope_parameters`` (a dataclass field), 4.x takes ``rope_theta``.
    Raises if the built config does not carry the asked-for base (a silently ignored
    keyword would change the model being measured)."""
    from transformers import LlamaConfig

    field_names = {f.name for f in dataclasses.fields(LlamaConfig)} if dataclasses.is_dataclass(LlamaConfig) else set()
    if "rope_parameters" in field_names or "rope_parameters" in LlamaConfig.__init__.__code__.co_varnames:
        config = LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, **fields)
    else:
        config = LlamaConfig(rope_theta=rope_theta, **fields)
    found = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", None))
    if found != rope_theta:
        raise RuntimeError(f"LlamaConfig did not take rope_theta={rope_theta} (it has {found!r}): "
                           "transformers changed how the rotary base is given")
    return config


def timed_ms(run: Callable[[], None], repeats: int, warmup: int = 2) -> float:
    """Median milliseconds of ``run()`` on the current CUDA stream (CUDA events)."""
    times = []
    for i in range(warmup + repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times)
