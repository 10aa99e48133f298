"""Where the native CPU step's time goes: the AdamW step of step_cpu.py (88.1M params) with
one phase at a time taken out of the kernel, single-threaded, in CPU time.

Each variant is the kernel's own source (impl/native/csrc) with one edit, built into a
temporary cache: no gradient scan; states not decoded (a constant instead); states not
encoded; neither. A phase's cost is the full step minus the step without it. The
variants change results, so this is a profile, never a correctness check. One thread and
process CPU time make it usable on a shared machine (another process's load does not
count, though it still shares caches and memory bandwidth). ``--levels avx512vbmi,avx512``
profiles several instruction-set levels (build.ISA_LEVELS) side by side in the same rounds.

    python benchmarks/step_cpu_phases.py [--state 8bit] [--rounds 5] [--levels L1,L2] [--out step_cpu_phases]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import tightfit
import tightfit.impl.native as native
from tightfit.impl.native import build

from step_cpu import RESULTS, cpu_model, llama_shapes

SKIP_SCAN = ("step.cpp", "    if (beyond_limit_in(job.grad_dtype, job.grad, start, n, job.grad_limit_bits)) {",
             "    if (false) {")
SKIP_DECODE = ("codecs.cpp", "void decode_state(const TfState& st, int64_t start, int n, float* out) {\n  switch",
               "void decode_state(const TfState& st, int64_t start, int n, float* out) {\n"
               "  if (st.codec >= C_Q8) { for (int i = 0; i < n; ++i) out[i] = 1e-6f; return; }\n  switch")
SKIP_ENCODE = ("codecs.cpp", "void encode_state(const TfState& st, int64_t start, int n, const float* x) {\n  switch",
               "void encode_state(const TfState& st, int64_t start, int n, const float* x) {\n"
               "  if (st.codec >= C_Q8) return;\n  switch")
VARIANTS = {"full step": [], "no gradient scan": [SKIP_SCAN], "no decode": [SKIP_DECODE],
            "no encode": [SKIP_ENCODE], "no decode, no encode": [SKIP_DECODE, SKIP_ENCODE]}


def variant_library(root: Path, edits, level: str | None = None) -> ctypes.CDLL:
    """The kernel's source with ``edits`` applied, built for ``level`` (default: this process's)."""
    src = root / "csrc"
    shutil.copytree(build.SOURCE_DIR, src)
    for name, old, new in edits:
        text = (src / name).read_text()
        if old not in text:
            raise SystemExit(f"{name}: the edit's anchor is gone; update step_cpu_phases.py")
        (src / name).write_text(text.replace(old, new))
    flags = build.FLAGS + build.ISA_LEVELS[level or build.isa()][1]
    target = root / "kernel.so"
    build._build(build._find_compiler(), src, target, flags)
    return build._bind(ctypes.CDLL(str(target)))


def llama_params() -> list[torch.nn.Parameter]:
    """step_cpu.py's Llama-shaped fp32 params (88.1M) with small random grads, seed 0."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in llama_shapes(1024, 2816, 2, 32000, 4).values()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def interleaved_rounds(names: list, rounds: int, run) -> None:
    """``run(name, timed)`` for every variant in each of ``rounds`` + 1 rounds (the first warms
    up, ``timed`` False), the order reversed every other round so load hits all variants alike."""
    for r in range(rounds + 1):
        for name in (names if r % 2 == 0 else names[::-1]):
            run(name, r > 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--state", default="8bit")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--levels", default=None,
                    help=f"comma-separated ISA levels to compare in one run ({', '.join(build.ISA_LEVELS)}); "
                         "default: this process's level")
    ap.add_argument("--out", default="step_cpu_phases")
    args = ap.parse_args()
    levels = args.levels.split(",") if args.levels else [build.isa()]
    bad = [level for level in levels if level not in build.runnable_levels()]
    if bad:  # before any work
        raise SystemExit(f"--levels: {', '.join(bad)} not among the levels this CPU runs: "
                         f"{', '.join(build.runnable_levels())}")
    torch.set_num_threads(1)
    params = llama_params()
    numel = sum(p.numel() for p in params)
    load = os.getloadavg()[0]
    runs = [(level, name) for level in levels for name in VARIANTS]
    with tempfile.TemporaryDirectory(prefix="tightfit-phases-") as tmp:
        libs = {run: variant_library(Path(tmp, str(i)), VARIANTS[run[1]], run[0]) for i, run in enumerate(runs)}
        opts = {run: tightfit.AdamW(params, lr=1e-5, state=args.state, impl="native") for run in runs}
        times = {run: [] for run in runs}

        def step(run: tuple[str, str], timed: bool) -> None:
            native.load_kernel = lambda lib=libs[run]: (lib, None)
            start = time.process_time()
            opts[run].step()
            if timed:
                times[run].append((time.process_time() - start) * 1e3)

        interleaved_rounds(runs, args.rounds, step)
    med = {run: statistics.median(ts) for run, ts in times.items()}
    date, device = datetime.date.today().isoformat(), f"{os.cpu_count()}-core CPU, {cpu_model()}"
    lines = [f"# Where the native AdamW {args.state} step's time goes ({numel / 1e6:.1f}M params, 1 thread, "
             f"CPU time)", "",
             f"Device: {device}; native ISA level(s) {', '.join(levels)}; date {date}; median of {args.rounds} "
             f"interleaved rounds; load average before: {load:.2f}, after: {os.getloadavg()[0]:.2f}.", "",
             "| ISA level | variant | ms CPU | ns/param | device | date |", "|---|---|---|---|---|---|"]
    lines += [f"| {lv} | {n} | {m:.1f} | {m * 1e6 / numel:.2f} | {device} | {date} |" for (lv, n), m in med.items()]
    lines += ["", "| ISA level | phase | ms CPU | share of the full step | device | date |", "|---|---|---|---|---|---|"]
    for lv in levels:
        full = med[(lv, "full step")]
        cost = {"gradient scan": full - med[(lv, "no gradient scan")],
                "decode (all states)": full - med[(lv, "no decode")],
                "encode (all states)": full - med[(lv, "no encode")],
                "rule math, param/grad traffic, rest": med[(lv, "no decode, no encode")]
                - (full - med[(lv, "no gradient scan")])}
        lines += [f"| {lv} | {n} | {c:.1f} | {c / full:.0%} | {device} | {date} |" for n, c in cost.items()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}_{args.state}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
