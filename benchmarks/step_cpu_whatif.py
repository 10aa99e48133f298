"""Upper bounds of proposed native-step speedups, measured before building them: the AdamW
8-bit step of step_cpu_phases.py (88.1M params, one thread, CPU time) with the kernel's
source edited to remove (or cheapen) what a proposal would save, plus the encoder alone
(tf_encode, one thread) on the step's own m and v. The edits change results: a profile,
never a correctness check. Variants:

* sqrt -> x*rsqrt14(x): the squared map's encoder with its exact sqrt replaced by an
  approximate one of two cheap instructions; bounds any scheme that avoids that sqrt
  (e.g. reusing the rule's sqrt(v)).
* tolerance 2^-11: segment closeness tolerance 4x tighter (4x fewer lanes take the
  exact division + bucket table); bounds what a tighter proof could save.
* no gradient scan: bounds folding the scan into the tile pass.
* source at REV (--before REV): the kernel's csrc as committed at REV, for a before/after
  comparison in one run; with --only-before, just that against the current source, at any
  ISA level (TIGHTFIT_NATIVE_ISA=avx2 to measure the AVX2 path).

--state 4bit times the 4-bit step and encoders instead (the edits above touch only 8-bit code).

    python benchmarks/step_cpu_whatif.py [--rounds 7] [--state 8bit|4bit] [--before REV [--only-before]]
                                         [--out step_cpu_whatif]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import tightfit
import tightfit.impl.native as native
from tightfit.impl.native import build
from tightfit.impl.native.codec_passes import _state_struct, native_decode

from step_cpu import RESULTS, cpu_model
from step_cpu_phases import SKIP_SCAN, interleaved_rounds, llama_params, variant_library

RSQRT = ("quant_avx512.h",
         "    w = _mm512_sqrt_ps(_mm512_max_ps(_mm512_sub_ps(tv, _mm512_permutexvar_ps(seg, t.c)), "
         "_mm512_setzero_ps()));",
         "    { const __m512 x = _mm512_max_ps(_mm512_sub_ps(tv, _mm512_permutexvar_ps(seg, t.c)), "
         "_mm512_setzero_ps());\n      w = _mm512_mul_ps(x, _mm512_rsqrt14_ps(x)); }")
TOL11 = ("quant.h", "constexpr float SEGMENT_U_TOLERANCE = 1.0f / 512.0f;",
         "constexpr float SEGMENT_U_TOLERANCE = 1.0f / 2048.0f;")
VARIANTS = {"full step": [], "sqrt -> x*rsqrt14(x)": [RSQRT], "tolerance 2^-11": [TOL11],
            "no gradient scan": [SKIP_SCAN]}


def source_at(rev: str) -> list[tuple[str, str, str]]:
    """Edits turning the kernel's csrc into its text at git revision rev (whole files). Files
    added since rev stay: rev's sources do not include them."""
    rel = build.SOURCE_DIR.relative_to(Path(__file__).resolve().parents[1])
    git = ["git", "-C", str(build.SOURCE_DIR)]
    changed = subprocess.run(git + ["diff", "--name-only", "--diff-filter=a", "--relative", rev, "--", "."],
                             check=True, capture_output=True, text=True).stdout.split()
    edits = []
    for name in changed:
        old = (build.SOURCE_DIR / name).read_text()
        new = subprocess.run(git + ["show", f"{rev}:{rel / name}"], check=True, capture_output=True, text=True).stdout
        edits.append((name, old, new))
    return edits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--before", default=None, help="git revision: add its kernel source as a variant")
    ap.add_argument("--only-before", action="store_true", help="time only the current source and --before's")
    ap.add_argument("--state", default="8bit", choices=["8bit", "4bit"])
    ap.add_argument("--out", default="step_cpu_whatif")
    args = ap.parse_args()
    if args.only_before:
        if not args.before:
            raise SystemExit("--only-before needs --before REV")
        for name in list(VARIANTS)[1:]:
            del VARIANTS[name]
    if args.before:
        VARIANTS[f"source at {args.before}"] = source_at(args.before)
    # avx512 and avx512vbmi share the encoder the edits are to
    if "avx512f" not in build.ISA_LEVELS[build.isa()][0] and not args.only_before:
        raise SystemExit(f"the edits are to the AVX-512 encoder; this CPU builds {build.isa()} (use --only-before)")
    torch.set_num_threads(1)
    params = llama_params()
    numel = sum(p.numel() for p in params)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tightfit-whatif-") as tmp:
        libs = {name: variant_library(Path(tmp, str(i)), edits) for i, (name, edits) in enumerate(VARIANTS.items())}
        opts = {name: tightfit.AdamW(params, lr=1e-5, state=args.state, impl="native") for name in VARIANTS}
        step = {name: [] for name in VARIANTS}
        enc = {(name, s): [] for name in VARIANTS for s in ("exp_avg", "exp_avg_sq")}
        inputs = {}  # (variant, state) -> the decoded values its encoder re-encodes each round
        big = params[0]  # embed_tokens: the encoder alone on the step's own states

        def run(name: str, timed: bool) -> None:
            native.load_kernel = lambda lib=libs[name]: (lib, None)
            start = time.process_time()
            opts[name].step()
            if timed:
                step[name].append((time.process_time() - start) * 1e3)
            for s in ("exp_avg", "exp_avg_sq"):
                e = opts[name].state[big][s]
                x = inputs.setdefault((name, s), native_decode(e))
                st = _state_struct(e)
                start = time.process_time()
                libs[name].tf_encode(st, x.numel(), x.data_ptr(), 1)
                if timed:
                    enc[(name, s)].append((time.process_time() - start) * 1e9 / x.numel())

        interleaved_rounds(list(VARIANTS), args.rounds, run)
    date, device = datetime.date.today().isoformat(), f"{os.cpu_count()}-core CPU, {cpu_model()}"
    full = statistics.median(step["full step"])
    lines = [f"# Upper bounds of native-step proposals (AdamW {args.state}, {numel / 1e6:.1f}M params, 1 thread, "
             "CPU time)",
             "", f"Device: {device}; native ISA level {build.isa()}; date {date}; median of {args.rounds} "
             f"interleaved rounds; load average before: {load:.2f}, after: {os.getloadavg()[0]:.2f}. Encoder: "
             f"tf_encode alone on embed_tokens' m (signed map) and v (squared map), {big.numel() / 1e6:.1f}M elements.",
             "", "| variant | step ms CPU | vs full step | encode m ns/elem | encode v ns/elem | device | date |",
             "|---|---|---|---|---|---|---|"]
    for name in VARIANTS:
        ms = statistics.median(step[name])
        em, ev = (statistics.median(enc[(name, s)]) for s in ("exp_avg", "exp_avg_sq"))
        lines.append(f"| {name} | {ms:.1f} | {ms / full - 1:+.1%} | {em:.3f} | {ev:.3f} | {device} | {date} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
