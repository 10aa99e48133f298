"""The GPU targets of the open issues, each read off one GPU run's result tables: the
measured value and pass / fail. ``gpu_summary.md`` is this table.

A target whose table or row is missing says why (the phase timed out, a peer was not
installed, a dry run measured nothing) instead of passing or failing.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MIB = 2**20
GB = 1e9


class NotMeasured(Exception):
    """Why a target has no value in this run."""


@dataclass(frozen=True)
class Verdict:
    measured: str
    status: str  # pass | fail | recorded (no threshold) | not measured


class Run:
    """One run folder: ``results/<table>.csv``, ``phases.json`` (phase -> status)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        path = self.folder / "phases.json"
        self.phases = json.loads(path.read_text()) if path.exists() else {}

    def _why_missing(self, phase: str) -> str:
        status = self.phases.get(phase, {}).get("status", "not run")
        return f"phase {phase}: {status}"

    def table(self, name: str, phase: str) -> list[dict]:
        path = self.folder / "results" / f"{name}.csv"
        if not path.exists():
            raise NotMeasured(f"no {name}.csv ({self._why_missing(phase)})")
        with path.open() as f:
            return list(csv.DictReader(f))

    def row(self, name: str, phase: str, **match) -> dict:
        """The measured row whose columns equal ``match``."""
        rows = [r for r in self.table(name, phase) if all(r.get(k) == v for k, v in match.items())]
        label = ", ".join(match.values())
        if not rows:
            raise NotMeasured(f"no row '{label}' in {name}.csv ({self._why_missing(phase)})")
        if rows[0]["status"] != "ok":
            raise NotMeasured(f"{label}: {rows[0]['status']}")
        return rows[0]


# --- the judges: Run -> Verdict (raise NotMeasured when the run has no value) -------------

def gpu_tests(run: Run) -> Verdict:
    path = run.folder / "results" / "gpu_tests.xml"
    if not path.exists():
        raise NotMeasured(f"no gpu_tests.xml ({run._why_missing('gpu_tests')})")
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failed, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    passed = total - failed - errors - skipped
    if total == 0:
        raise NotMeasured(f"no test ran ({run._why_missing('gpu_tests')})")
    ok = failed == 0 and errors == 0 and passed > 0
    return Verdict(f"{passed} passed, {failed} failed, {errors} errors, {skipped} skipped", "pass" if ok else "fail")


def copy_fraction(optimizer: str, at_least: float) -> Callable[[Run], Verdict]:
    def judge(run: Run) -> Verdict:
        row = run.row("step_gpu", "step_gpu", optimizer=optimizer)
        fraction = float(row["copy_fraction"])
        return Verdict(f"{fraction:.0%} of copy ({row['gb_per_s']} GB/s, {row['ms_per_step']} ms)",
                       "pass" if fraction >= at_least else "fail")
    return judge


def speedup(ours: str, peer: str, at_least: float) -> Callable[[Run], Verdict]:
    def judge(run: Run) -> Verdict:
        mine, theirs = (float(run.row("step_gpu", "step_gpu", optimizer=n)["ms_per_step"]) for n in (ours, peer))
        ratio = theirs / mine
        return Verdict(f"{ratio:.2f}x ({mine:.2f} vs {theirs:.2f} ms)", "pass" if ratio >= at_least else "fail")
    return judge


def no_host_sync(run: Run) -> Verdict:
    rows = [r for r in run.table("step_gpu", "step_gpu") if r["optimizer"].startswith("tightfit") and r["status"] == "ok"]
    if not rows:
        raise NotMeasured("no tightfit row measured in step_gpu.csv")
    syncing = [r["optimizer"] for r in rows if r["host_sync"] != "none"]
    measured = f"{len(rows) - len(syncing)} of {len(rows)} rows sync-free" + (f"; sync: {', '.join(syncing)}" if syncing else "")
    return Verdict(measured, "fail" if syncing else "pass")


def _pcie_floor_ms(run: Run, state_bytes: float) -> tuple[float, str]:
    """Moving ``state_bytes`` in and out at once (PCIe is full duplex): the slower direction."""
    h2d, d2h = (float(run.row("paging_gpu", "paging_gpu", optimizer=f"PCIe {d} (pinned)")["gb_per_s"])
                for d in ("host to device", "device to host"))
    return max(state_bytes / h2d, state_bytes / d2h) / 1e6, f"H2D {h2d:.0f}, D2H {d2h:.0f} GB/s"


def paging_overhead(at_most: float) -> Callable[[Run], Verdict]:
    def judge(run: Run) -> Verdict:
        device = run.row("paging_gpu", "paging_gpu", optimizer="tightfit AdamW 8bit", mode="on device")
        paged = run.row("paging_gpu", "paging_gpu", optimizer="tightfit AdamW 8bit", mode="paged")
        overhead = float(paged["iter_ms"]) - float(device["iter_ms"])
        floor, links = _pcie_floor_ms(run, float(paged["state_host_gb"]) * GB)
        ratio = overhead / floor
        return Verdict(f"+{overhead:.1f} ms over on-device vs PCIe floor {floor:.1f} ms ({ratio:.2f}x; {links})",
                       "pass" if overhead <= (1 + at_most) * floor else "fail")
    return judge


def paged_vs_bnb(run: Run) -> Verdict:
    ours = float(run.row("paging_gpu", "paging_gpu", optimizer="tightfit AdamW 8bit", mode="paged")["iter_ms"])
    bnb = float(run.row("paging_gpu", "paging_gpu", optimizer="bnb PagedAdamW8bit", mode="paged")["iter_ms"])
    return Verdict(f"{ours:.1f} vs {bnb:.1f} ms per iteration", "pass" if ours <= bnb else "fail")


def paged_device_bytes(at_most: int) -> Callable[[Run], Verdict]:
    def judge(run: Run) -> Verdict:
        device = run.row("paging_gpu", "paging_gpu", optimizer="tightfit AdamW 8bit", mode="on device")
        paged = run.row("paging_gpu", "paging_gpu", optimizer="tightfit AdamW 8bit", mode="paged")
        # the on-device run's peak less its states is the model's own; what the paged peak adds to it
        # is what paging costs the device (slots, device-resident state)
        model_only = float(device["peak_allocated_gb"]) - float(device["state_device_gb"])
        cost = (float(paged["peak_allocated_gb"]) - model_only) * GB
        return Verdict(f"{cost / MIB:.0f} MiB by max_memory_allocated (memory_report: "
                       f"{(float(paged['state_device_gb']) + float(paged['stream_buffer_gb'])) * GB / MIB:.0f} MiB)",
                       "pass" if cost <= at_most else "fail")
    return judge


def planner_within(at_most: float) -> Callable[[Run], Verdict]:
    def judge(run: Run) -> Verdict:
        rows = run.table("planner_gpu", "planner_gpu")
        done = [r for r in rows if r["status"] == "ok"]
        if not done:
            raise NotMeasured("no case measured: " + "; ".join(f"{r['case']}: {r['status']}" for r in rows[:2]))
        worst = max(done, key=lambda r: abs(float(r["error"])))
        missing = len(rows) - len(done)
        ok = abs(float(worst["error"])) <= at_most and not missing
        return Verdict(f"worst {float(worst['error']):+.1%} ({worst['case']}); {len(done)} of {len(rows)} cases measured",
                       "pass" if ok else "fail")
    return judge


def recorded(table: str, phase: str) -> Callable[[Run], Verdict]:
    """A table the issue asks for without a threshold: measured or not."""
    def judge(run: Run) -> Verdict:
        rows = [r for r in run.table(table, phase) if r.get("status") == "ok"]
        if not rows:
            raise NotMeasured(f"no row measured in {table}.csv")
        return Verdict(f"{len(rows)} rows in {table}.md", "recorded")
    return judge


def peak_at_most(table: str, phase: str, limit: int) -> Callable[[Run], Verdict]:
    def judge(run: Run) -> Verdict:
        rows = [r for r in run.table(table, phase) if r.get("status") == "ok"]
        if not rows:
            raise NotMeasured(f"no row measured in {table}.csv")
        peak = max(float(r["peak_allocated_gb"]) for r in rows) * GB
        return Verdict(f"peak {peak / 2**30:.2f} GiB", "pass" if peak <= limit else "fail")
    return judge


def offload_vs_peers(run: Run) -> Verdict:
    """The offloaded 8-bit row against the peers' offload rows: time and peak, no threshold."""
    ours = run.row("offload_gpu", "offload_gpu", optimizer="tightfit AdamW 8bit offload")
    parts = [f"tightfit 8-bit offload {ours['iter_ms']} ms/iter, peak {ours['peak_allocated_gb']} GB, "
             f"host {ours['host_gb']} GB"]
    for peer in ("torchao CPUOffloadOptimizer (AdamW fused)", "DeepSpeedCPUAdam offload",
                 "tightfit AdamW 8bit on device"):
        try:
            row = run.row("offload_gpu", "offload_gpu", optimizer=peer)
            parts.append(f"{peer} {row['iter_ms']} ms, peak {row['peak_allocated_gb']} GB")
        except NotMeasured as why:
            parts.append(str(why))
    return Verdict("; ".join(parts), "recorded")


HOST_REFERENCES = ("DeepSpeedCPUAdam (fp32 states)", "torch AdamW fused")  # the fp32 step to beat, first found


def host_step(optimizer: str, at_most: float) -> Callable[[Run], Verdict]:
    """step_cpu_host.csv: ``optimizer``'s ms per step over the fp32 reference's at all the
    host's threads (DeepSpeedCPUAdam where it ran, else torch AdamW fused; named)."""
    def judge(run: Run) -> Verdict:
        table = run.table("step_cpu_host", "step_cpu_host")
        host_threads = next((r["host_threads"] for r in table if r.get("host_threads")), "")
        mine = run.row("step_cpu_host", "step_cpu_host", optimizer=optimizer, threads=host_threads)
        missing = []
        for name in HOST_REFERENCES:
            try:
                reference = run.row("step_cpu_host", "step_cpu_host", optimizer=name, threads=host_threads)
                break
            except NotMeasured as why:
                missing.append(str(why))
        else:
            raise NotMeasured("no fp32 reference: " + "; ".join(missing))
        ratio = float(mine["ms_per_step"]) / float(reference["ms_per_step"])
        parts = [f"{ratio:.2f}x {reference['optimizer']} ({float(mine['ms_per_step']):.1f} vs "
                 f"{float(reference['ms_per_step']):.1f} ms, {mine['gb_per_s']} GB/s; {host_threads} threads of "
                 f"{mine['cpu_count']} CPUs, {mine['device']}, {mine['native_isa']})"]
        if mine.get("cpu_per_wall"):  # CPU time over wall time: the threads the step really kept busy
            parts.append(f"cpu/wall {mine['cpu_per_wall']}")
        try:  # the scaling picture: the same ratio at one thread
            one = [run.row("step_cpu_host", "step_cpu_host", optimizer=n, threads="1")["ms_per_step"]
                   for n in (optimizer, reference["optimizer"])]
            parts.append(f"1 thread: {float(one[0]) / float(one[1]):.2f}x")
        except NotMeasured:
            pass
        parts += [f"reference fallback: {why}" for why in missing]
        return Verdict("; ".join(parts), "pass" if ratio <= at_most else "fail")
    return judge


@dataclass(frozen=True)
class Target:
    issue: str
    claim: str
    judge: Callable[[Run], Verdict]


TARGETS = [
    Target("#4", "GPU tests pass (`pytest -m gpu tests`: fused and factored kernels, paging on CUDA)", gpu_tests),
    Target("#4", "tightfit AdamW 8-bit step >= 85% of device copy bandwidth (over minimum bytes)",
           copy_fraction("tightfit AdamW 8bit", 0.85)),
    Target("#4", "tightfit AdamW 4-bit step >= 85% of device copy bandwidth", copy_fraction("tightfit AdamW 4bit", 0.85)),
    Target("#4", "AdamW 8-bit >= 1.3x faster than bitsandbytes AdamW8bit",
           speedup("tightfit AdamW 8bit", "bnb AdamW8bit", 1.3)),
    Target("#4", "AdamW 8-bit >= 1.2x faster than torchao AdamW8bit",
           speedup("tightfit AdamW 8bit", "torchao AdamW8bit", 1.2)),
    Target("#4", "no tightfit step after the first synchronises with the host", no_host_sync),
    Target("#5", "paging overhead <= 15% over the PCIe floor (8-bit AdamW, 1B Llama)", paging_overhead(0.15)),
    Target("#5", "paged 8-bit iteration <= bitsandbytes PagedAdamW8bit iteration", paged_vs_bnb),
    Target("#5", "paged 8-bit state costs <= 64 MiB of device memory", paged_device_bytes(64 * MIB)),
    Target("#15", "planner peak within +-5% of max_memory_allocated (1B Llama matrix)", planner_within(0.05)),
    Target("#19", "offload placement: step time and peak vs torchao CPUOffloadOptimizer, DeepSpeed (offload_gpu.py)",
           offload_vs_peers),
    Target("#19", "host CPU, all cores: tightfit AdamW 8-bit step <= 1.0x the fp32 reference "
                  "(DeepSpeedCPUAdam, else torch AdamW fused; step_cpu_host.py)", host_step("tightfit AdamW 8bit", 1.0)),
    Target("#19", "host CPU, all cores: tightfit AdamW 4-bit step <= 1.0x the fp32 reference",
           host_step("tightfit AdamW 4bit", 1.0)),
    Target("#19", "host CPU, all cores: tightfit AdamW fp32 step <= 1.0x the fp32 reference",
           host_step("tightfit AdamW fp32", 1.0)),
    Target("moonshot", "Llama-3.1-8B fine-tune peaks within 24 GiB (moonshot_gpu.py)",
           peak_at_most("moonshot_gpu", "moonshot_gpu", 24 * 2**30)),
]


def verdicts(run: Run) -> list[tuple[Target, Verdict]]:
    out = []
    for target in TARGETS:
        try:
            verdict = target.judge(run)
        except NotMeasured as why:
            verdict = Verdict(str(why), "not measured")
        except (KeyError, ValueError, ET.ParseError) as error:  # a table without the expected columns
            verdict = Verdict(f"unreadable result: {type(error).__name__}: {error}", "not measured")
        out.append((target, verdict))
    return out


def summary_markdown(run: Run, header: str) -> str:
    lines = [header, "", "| issue | target | measured | pass/fail |", "|---|---|---|---|"]
    for target, verdict in verdicts(run):
        cells = [target.issue, target.claim, verdict.measured, verdict.status]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"
