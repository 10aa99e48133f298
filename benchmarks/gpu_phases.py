"""One GPU run, time-boxed, with every result packed into two files that come back.

The phases run in order of value, each under its own budget (run by ``gpu_all.sh``; see
docs/benchmarks.md).

A phase is a command run from the repo root that writes its tables into ``--results DIR``
and its output to a log; a benchmark script also takes ``--dry-run`` (build everything on
the CPU, measure nothing). A phase whose script does not exist yet is recorded as not
built. A phase gets its budget plus what earlier phases left unused, never more than the
run has left; past it the phase is interrupted (SIGINT, so pytest and the scripts keep what
they wrote), then killed. Then ``gpu_summary.md`` (one table: each target of the open
issues, measured value, pass/fail; gpu_targets.py) and ``gpu_results.tar.gz`` (tables,
logs, phase statuses, device facts) are written to the output folder.

    python3 benchmarks/gpu_phases.py [--quick | --full] [--dry-run] [--out DIR] [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import gpu_targets

ROOT = Path(__file__).resolve().parents[1]
# Seconds for all phases together: with the wheel install and the packing around them, a
# quick run ends within 6 minutes and a full one within 9 (one device command may run 10).
RUN_BUDGET_S = {"quick": 315, "full": 495}
GRACE_S = 10  # from SIGINT to SIGKILL
MIN_PHASE_S = 5  # less is not enough to start Python and import torch
LOG_LIMIT = 2 * 2**20  # a longer log keeps its head and tail
# What comes back from the device: at most 8 files of at most 16 MiB, named in [A-Za-z0-9._-].
OUT_FILES_MAX, OUT_FILE_BYTES_MAX = 8, 16 * 2**20
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class Phase:
    name: str
    command: tuple[str, ...]  # after `python3`; "{results}" becomes the results folder
    budget_s: dict[str, int]  # mode -> seconds; a mode missing here skips the phase in that mode
    mode_args: dict[str, tuple[str, ...]] = field(default_factory=dict)
    requires: str = ""  # a repo path that must exist (else: not built)


def benchmark(name: str, quick: tuple[str, ...], full: tuple[str, ...], budget: tuple[int, int]) -> Phase:
    """benchmarks/<name>.py with its quick and full arguments; budget (quick, full) seconds,
    a quick budget of 0 leaves it out of quick runs."""
    budgets = {"quick": budget[0], "full": budget[1], "dry": 300}
    if not budget[0]:
        del budgets["quick"]
    return Phase(name, (f"benchmarks/{name}.py", "--results", "{results}"), budgets,
                 {"quick": quick, "full": full, "dry": ("--dry-run",)}, requires=f"benchmarks/{name}.py")


# In order of value: what the open issues ask first comes first.
PHASES = [
    Phase("gpu_tests", ("-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "gpu", "tests",
                        "--junitxml={results}/gpu_tests.xml"),
          {"quick": 85, "full": 105, "dry": 300}, {"dry": ("--collect-only",)}, requires="tests"),
    benchmark("step_gpu", ("--layers", "1", "--steps", "5", "--warmup", "2"),
              ("--layers", "4", "--steps", "20", "--warmup", "5"), (70, 125)),
    benchmark("paging_gpu", ("--steps", "3", "--warmup", "1"), ("--steps", "5", "--warmup", "2"), (60, 105)),
    benchmark("planner_gpu", ("--quick",), (), (50, 70)),
    benchmark("offload_gpu", ("--quick",), (), (30, 45)),  # issue 19
    # issue 19's CPU step on the host's cores (no GPU needed; here because only this host has many)
    benchmark("step_cpu_host", ("--quick",), (), (20, 30)),
    benchmark("moonshot_gpu", (), (), (0, 15)),  # 8B in 24 GiB: once the script exists
]


def command_for(phase: Phase, mode: str, results: Path) -> list[str]:
    parts = list(phase.command) + list(phase.mode_args.get(mode, ()))
    return [sys.executable] + [p.replace("{results}", str(results)) for p in parts]


def run_phase(phase: Phase, mode: str, folder: Path, limit_s: float) -> dict:
    """Run one phase under ``limit_s`` seconds; its status, exit code and seconds."""
    if phase.requires and not (ROOT / phase.requires).exists():
        return {"status": f"not built ({phase.requires} does not exist yet)", "seconds": 0}
    if mode not in phase.budget_s:
        return {"status": f"skipped in {mode} mode", "seconds": 0}
    if limit_s < MIN_PHASE_S:
        return {"status": "skipped: no time left in the run's budget", "seconds": 0}
    command = command_for(phase, mode, folder / "results")
    start = time.monotonic()
    with open(folder / "logs" / f"{phase.name}.log", "w") as log:
        log.write(f"$ {' '.join(command)}   (limit {limit_s:.0f} s)\n")
        log.flush()
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=limit_s)
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)  # pytest and the scripts keep what they wrote
            try:
                code = process.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                code = process.wait()
            status = f"timed out after {limit_s:.0f} s (what it wrote before is kept)"
    return {"status": status, "exit_code": code, "seconds": round(time.monotonic() - start, 1)}


def run_phases(mode: str, folder: Path) -> dict:
    if mode == "dry":  # nothing is timed: the phases check their setup side by side
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            done = pool.map(lambda p: run_phase(p, mode, folder, p.budget_s[mode]), PHASES)
            statuses = {phase.name: {**result, "budget_s": phase.budget_s[mode]} for phase, result in zip(PHASES, done)}
        for name, result in statuses.items():
            print(f"[{name}] {result['status']} ({result['seconds']} s of {result['budget_s']} s)", flush=True)
        (folder / "phases.json").write_text(json.dumps(statuses, indent=1))
        return statuses
    deadline = time.monotonic() + RUN_BUDGET_S[mode]
    statuses, unused = {}, 0.0
    for phase in PHASES:
        budget = phase.budget_s.get(mode, 0) + unused
        limit = min(budget, deadline - time.monotonic())
        result = run_phase(phase, mode, folder, limit)
        result["budget_s"] = round(budget)
        unused = max(0.0, budget - result["seconds"]) if mode in phase.budget_s else unused
        statuses[phase.name] = result
        print(f"[{phase.name}] {result['status']} ({result['seconds']} s of {result['budget_s']} s)", flush=True)
        (folder / "phases.json").write_text(json.dumps(statuses, indent=1))
    return statuses


def device_facts(dry_run: bool) -> str:
    if dry_run:
        return "no GPU: dry run on the CPU, nothing measured"
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip() or "nvidia-smi printed nothing"
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"nvidia-smi unavailable ({type(error).__name__})"


def trim_logs(folder: Path) -> None:
    for log in (folder / "logs").glob("*.log"):
        if log.stat().st_size > LOG_LIMIT:
            data = log.read_bytes()
            half = LOG_LIMIT // 2
            log.write_bytes(data[:half] + b"\n[... cut: the log was longer than 2 MiB ...]\n" + data[-half:])


def pack(folder: Path, out: Path, summary: str) -> list[Path]:
    """``gpu_summary.md`` and ``gpu_results.tar.gz`` (the whole run folder) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    trim_logs(folder)
    (folder / "gpu_summary.md").write_text(summary)
    files = [out / "gpu_summary.md", out / "gpu_results.tar.gz"]
    files[0].write_text(summary)
    with tarfile.open(files[1], "w:gz") as archive:
        archive.add(folder, arcname="gpu_run")
    check_returnable(out)
    return files


def check_returnable(out: Path) -> None:
    """The device returns at most 8 files, 16 MiB each, named plainly, two folders deep."""
    files = [p for p in out.rglob("*") if p.is_file()]
    problems = [f"{len(files)} files (at most {OUT_FILES_MAX})"] if len(files) > OUT_FILES_MAX else []
    problems += [f"{p.name}: {p.stat().st_size} bytes" for p in files if p.stat().st_size > OUT_FILE_BYTES_MAX]
    problems += [f"{p.name}: name" for p in files if not OUT_NAME.match(p.name)]
    problems += [f"{p}: too deep" for p in files if len(p.relative_to(out).parts) > 3]
    if problems:
        raise RuntimeError(f"{out} would not come back whole from the device: {'; '.join(problems)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="<= 6 minutes: smaller models, fewer steps")
    group.add_argument("--full", action="store_true", help="<= 9 minutes (the default)")
    parser.add_argument("--dry-run", action="store_true",
                        help="no CUDA: every phase's setup on the CPU (collection, configs, optimizers), and the packing")
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                        help="where the two files go [$OUT, else RUN_DIR_out beside the run folder]")
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/tightfit_gpu_run"),
                        help="working folder, emptied first [/tmp/tightfit_gpu_run]")
    args = parser.parse_args(argv)
    mode = "dry" if args.dry_run else "quick" if args.quick else "full"
    folder = args.run_dir.resolve()
    out = (args.out or folder.parent / f"{folder.name}_out").resolve()
    if folder in (out, *out.parents) or out in folder.parents:
        parser.error(f"--out {out} and --run-dir {folder} must not contain one another (the run folder is packed)")
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "results").mkdir(parents=True)
    (folder / "logs").mkdir()
    started = datetime.datetime.now(datetime.timezone.utc)
    device = device_facts(args.dry_run)
    (folder / "device.txt").write_text(device + "\n")
    print(f"GPU run ({mode}) on {device}", flush=True)
    statuses = run_phases(mode, folder)
    header = (f"GPU run `{mode}`, {started:%Y-%m-%d %H:%M} UTC, device: {device}. Phases: "
              + "; ".join(f"{name} {s['status']} ({s['seconds']} s)" for name, s in statuses.items())
              + ". Tables and logs: gpu_results.tar.gz.")
    files = pack(folder, out, gpu_targets.summary_markdown(gpu_targets.Run(folder), header))
    print((out / "gpu_summary.md").read_text())
    print("wrote " + ", ".join(f"{f} ({f.stat().st_size / 2**20:.2f} MiB)" for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
