"""Ways to find 4-bit codes on AVX-512, side by side: encode4_search.cpp (the block encoder of
csrc/quant_avx512.h around a binary search with and without index arithmetic, bucket tables
of 64 or 32 entries over |y|'s bits, and no search at all), built with the native kernel's
AVX-512 flags and run on each 4-bit map, one thread, CPU time, median of 9 interleaved
rounds over a 16K-element tile. Each way is first checked against the scalar count of
midpoints below y (mismatches column: must be 0).

    python benchmarks/encode4_search.py [--out encode4_search]
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import tempfile
from pathlib import Path

from tightfit.codecs.maps import get_map
from tightfit.impl.native import build

from step_cpu import RESULTS, cpu_model

SOURCE = Path(__file__).with_name("encode4_search.cpp")
MAPS = {"dynamic4_signed": "signed", "dynamic4_squared": "unsigned", "linear4_unsigned": "unsigned"}
USE = {"dynamic4_signed": "4-bit m", "dynamic4_squared": "4-bit v", "linear4_unsigned": "format-1 v, converted on load"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="encode4_search")
    args = ap.parse_args()
    if "avx512" not in build.choose_isa(build.cpu_flags()):
        raise SystemExit("this CPU has no AVX-512 level")
    compiler = build._find_compiler()
    flags = ["-O3", "-std=c++17"] + build.ISA_LEVELS["avx512"][1]
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tightfit-encode4-") as tmp:
        exe = Path(tmp, "encode4_search")
        subprocess.run([compiler, *flags, "-o", str(exe), str(SOURCE)], check=True, capture_output=True)
        for name, kind in MAPS.items():
            mids = [repr(float(m)) for m in get_map(name).midpoints]
            out = subprocess.run([str(exe), kind, *mids], check=True, capture_output=True, text=True).stdout
            rows += [(name, *line.split("\t")) for line in out.strip().splitlines()]
    date, device = datetime.date.today().isoformat(), f"{os.cpu_count()}-core CPU, {cpu_model()}"
    lines = ["# 4-bit code search on AVX-512 (block encoder, 1 thread, CPU time)", "",
             f"Device: {device}; {compiler} {' '.join(flags)}; date {date}; median of 9 interleaved rounds; "
             f"load average before: {load:.2f}, after: {os.getloadavg()[0]:.2f}.", "",
             "| map (use) | way | ns/element | mismatches | table | device | date |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {name} ({USE[name]}) | {way} | {ns} | {bad} | {note} | {device} | {date} |"
              for name, way, ns, bad, note in rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
