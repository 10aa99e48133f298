"""gpu_summary.md's verdicts read off result tables: pass, fail, or not measured with why."""

import csv
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_targets import TARGETS, Run, copy_fraction, host_step, speedup, summary_markdown, verdicts

STEP_FIELDS = ["optimizer", "status", "ms_per_step", "gb_per_s", "copy_fraction", "host_sync"]
PAGING_FIELDS = ["optimizer", "mode", "status", "iter_ms", "peak_allocated_gb", "state_device_gb", "state_host_gb",
                 "stream_buffer_gb", "gb_per_s"]


def write_table(folder, name, fields, rows):
    (folder / "results").mkdir(exist_ok=True)
    with open(folder / "results" / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows([{k: row.get(k, "") for k in fields} for row in rows])


HOST_FIELDS = ["optimizer", "threads", "status", "ms_per_step", "gb_per_s", "device", "cpu_count", "host_threads",
               "native_isa"]


def host_row(name, threads, ms, status="ok"):
    return {"optimizer": name, "threads": str(threads), "status": status, "ms_per_step": str(ms), "gb_per_s": "40",
            "device": "Xeon", "cpu_count": "16", "host_threads": "16", "native_isa": "avx512"}


def step_row(name, ms, fraction="", sync="none", status="ok"):
    return {"optimizer": name, "status": status, "ms_per_step": str(ms), "gb_per_s": "3000",
            "copy_fraction": str(fraction), "host_sync": sync}


@pytest.fixture
def measured_run(tmp_path):
    """A run whose numbers put every target on a known side of its threshold."""
    write_table(tmp_path, "step_gpu", STEP_FIELDS, [
        step_row("tightfit AdamW 8bit", 10, 0.90), step_row("tightfit AdamW 4bit", 9, 0.80),
        step_row("bnb AdamW8bit", 14), step_row("torchao AdamW8bit", 11),
        step_row("tightfit CAME 8bit", 30, 0.3, sync="none")])
    write_table(tmp_path, "paging_gpu", PAGING_FIELDS, [
        {"optimizer": "PCIe host to device (pinned)", "status": "ok", "gb_per_s": "50"},
        {"optimizer": "PCIe device to host (pinned)", "status": "ok", "gb_per_s": "40"},
        # floor: 2.5 GB at 40 GB/s = 62.5 ms; overhead 60 ms; paging costs 10.05 - (10 - 2.5) ... 47.7 MiB
        {"optimizer": "tightfit AdamW 8bit", "mode": "on device", "status": "ok", "iter_ms": "100",
         "peak_allocated_gb": "10", "state_device_gb": "2.5", "state_host_gb": "0", "stream_buffer_gb": "0"},
        {"optimizer": "tightfit AdamW 8bit", "mode": "paged", "status": "ok", "iter_ms": "160",
         "peak_allocated_gb": "7.55", "state_device_gb": "0", "state_host_gb": "2.5", "stream_buffer_gb": "0.048"},
        {"optimizer": "bnb PagedAdamW8bit", "mode": "paged", "status": "ok", "iter_ms": "170"}])
    write_table(tmp_path, "planner_gpu", ["case", "status", "error"], [
        {"case": "a", "status": "ok", "error": "+0.03"}, {"case": "b", "status": "ok", "error": "-0.06"}])
    write_table(tmp_path, "step_cpu_host", HOST_FIELDS, [
        host_row("tightfit AdamW 8bit", 16, 30), host_row("tightfit AdamW 4bit", 16, 40),
        host_row("tightfit AdamW fp32", 16, 41), host_row("torch AdamW fused", 16, 42),
        host_row("DeepSpeedCPUAdam (fp32 states)", 16, 40),
        host_row("tightfit AdamW 8bit", 1, 200), host_row("DeepSpeedCPUAdam (fp32 states)", 1, 80)])
    (tmp_path / "results" / "gpu_tests.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="14" failures="0" errors="0" skipped="0"/></testsuites>')
    (tmp_path / "phases.json").write_text(json.dumps({"offload_gpu": {"status": "not built"},
                                                      "moonshot_gpu": {"status": "timed out after 45 s"}}))
    return Run(tmp_path)


EXPECTED = {  # target claim (start) -> (status, text in the measured value)
    "GPU tests pass": ("pass", "14 passed"),
    "tightfit AdamW 8-bit step >= 85%": ("pass", "90% of copy"),
    "tightfit AdamW 4-bit step >= 85%": ("fail", "80% of copy"),
    "AdamW 8-bit >= 1.3x faster than bitsandbytes": ("pass", "1.40x"),
    "AdamW 8-bit >= 1.2x faster than torchao": ("fail", "1.10x"),
    "no tightfit step after the first": ("pass", "3 of 3 rows sync-free"),
    "paging overhead <= 15%": ("pass", "+60.0 ms over on-device vs PCIe floor 62.5 ms"),
    "paged 8-bit iteration <= bitsandbytes": ("pass", "160.0 vs 170.0 ms"),
    "paged 8-bit state costs <= 64 MiB": ("pass", "48 MiB by max_memory_allocated"),
    "planner peak within +-5%": ("fail", "worst -6.0% (b)"),
    "offload placement": ("not measured", "phase offload_gpu: not built"),
    "host CPU, all cores: tightfit AdamW 8-bit": ("pass", "0.75x DeepSpeedCPUAdam (fp32 states) (30.0 vs 40.0 ms, "
                                                          "40 GB/s; 16 threads of 16 CPUs, Xeon, avx512); 1 thread: 2.50x"),
    "host CPU, all cores: tightfit AdamW 4-bit": ("pass", "1.00x DeepSpeedCPUAdam"),  # at the threshold
    "host CPU, all cores: tightfit AdamW fp32": ("fail", "1.02x DeepSpeedCPUAdam"),
    "Llama-3.1-8B fine-tune": ("not measured", "phase moonshot_gpu: timed out after 45 s"),
}


def test_every_target_has_an_expected_verdict():
    assert len(EXPECTED) == len(TARGETS)
    assert all(any(t.claim.startswith(k) for t in TARGETS) for k in EXPECTED)


@pytest.mark.parametrize("claim", EXPECTED)
def test_verdict(measured_run, claim):
    (verdict,) = [v for t, v in verdicts(measured_run) if t.claim.startswith(claim)]
    status, text = EXPECTED[claim]
    assert verdict.status == status and text in verdict.measured, verdict


def test_a_failed_row_is_not_measured_with_its_status(tmp_path):
    write_table(tmp_path, "step_gpu", STEP_FIELDS, [step_row("tightfit AdamW 8bit", 10, 0.9),
                                                    step_row("torchao AdamW8bit", "", status="skipped: ModuleNotFoundError")])
    (verdict,) = [v for t, v in verdicts(Run(tmp_path)) if "faster than torchao" in t.claim]
    assert verdict.status == "not measured" and "skipped: ModuleNotFoundError" in verdict.measured


def test_a_row_that_synchronises_fails_and_is_named(tmp_path):
    write_table(tmp_path, "step_gpu", STEP_FIELDS, [step_row("tightfit AdamW 8bit", 10, 0.9),
                                                    step_row("tightfit CAME 8bit", 10, 0.9, sync="sync: item()")])
    (verdict,) = [v for t, v in verdicts(Run(tmp_path)) if "synchronises" in t.claim]
    assert verdict.status == "fail" and "tightfit CAME 8bit" in verdict.measured


def test_an_empty_run_measures_nothing_and_the_summary_is_one_table(tmp_path):
    summary = summary_markdown(Run(tmp_path), "header")
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(TARGETS) and all(row.endswith("| not measured |") for row in rows)


@settings(max_examples=50, deadline=None)
@given(ours=st.floats(0.01, 1e4), theirs=st.floats(0.01, 1e4), threshold=st.floats(0.5, 3))
def test_speedup_passes_exactly_when_the_ratio_reaches_the_threshold(tmp_path_factory, ours, theirs, threshold):
    folder = tmp_path_factory.mktemp("run")
    write_table(folder, "step_gpu", STEP_FIELDS, [step_row("ours", ours), step_row("peer", theirs)])
    verdict = speedup("ours", "peer", threshold)(Run(folder))
    assert verdict.status == ("pass" if float(str(theirs)) / float(str(ours)) >= threshold else "fail")


@settings(max_examples=30, deadline=None)
@given(fraction=st.floats(0, 2), threshold=st.floats(0, 1))
def test_copy_fraction_passes_exactly_at_or_above_the_threshold(tmp_path_factory, fraction, threshold):
    folder = tmp_path_factory.mktemp("run")
    write_table(folder, "step_gpu", STEP_FIELDS, [step_row("ours", 1, fraction)])
    verdict = copy_fraction("ours", threshold)(Run(folder))
    assert verdict.status == ("pass" if float(str(fraction)) >= threshold else "fail")


def test_offload_rows_are_recorded_with_the_peers_and_why_one_is_missing(tmp_path):
    fields = ["optimizer", "status", "iter_ms", "peak_allocated_gb", "host_gb"]
    write_table(tmp_path, "offload_gpu", fields, [
        {"optimizer": "tightfit AdamW 8bit offload", "status": "ok", "iter_ms": "900", "peak_allocated_gb": "9.1",
         "host_gb": "9.9"},
        {"optimizer": "torchao CPUOffloadOptimizer (AdamW fused)", "status": "ok", "iter_ms": "1500",
         "peak_allocated_gb": "9.5"},
        {"optimizer": "DeepSpeedCPUAdam offload", "status": "skipped: ModuleNotFoundError: No module named 'deepspeed'"}])
    (verdict,) = [v for t, v in verdicts(Run(tmp_path)) if t.claim.startswith("offload placement")]
    assert verdict.status == "recorded"
    assert "tightfit 8-bit offload 900 ms/iter, peak 9.1 GB, host 9.9 GB" in verdict.measured
    assert "torchao CPUOffloadOptimizer (AdamW fused) 1500 ms, peak 9.5 GB" in verdict.measured
    assert "No module named 'deepspeed'" in verdict.measured


@pytest.mark.parametrize("deepspeed,reference,why", [
    (None, "torch AdamW fused", "no row 'DeepSpeedCPUAdam (fp32 states), 16'"),  # not installed: no row
    ("failed: RuntimeError: no cpu_adam build", "torch AdamW fused", "no cpu_adam build"),
    ("ok", "DeepSpeedCPUAdam (fp32 states)", None),
])
def test_host_step_is_against_deepspeed_where_it_ran_else_torch_fused_and_says_why(tmp_path, deepspeed, reference, why):
    rows = [host_row("tightfit AdamW 8bit", 16, 50), host_row("torch AdamW fused", 16, 25)]
    if deepspeed:
        rows.append(host_row("DeepSpeedCPUAdam (fp32 states)", 16, 100, status=deepspeed))
    write_table(tmp_path, "step_cpu_host", HOST_FIELDS, rows)
    verdict = host_step("tightfit AdamW 8bit", 1.0)(Run(tmp_path))
    assert verdict.measured.startswith(f"{50 / (25 if reference.startswith('torch') else 100):.2f}x {reference} (")
    assert verdict.status == ("fail" if reference.startswith("torch") else "pass")
    assert (why is None) == ("reference fallback" not in verdict.measured) and (why or "") in verdict.measured
    assert "1 thread" not in verdict.measured  # no one-thread rows in this table


@pytest.mark.parametrize("rows,reason", [
    ([host_row("tightfit AdamW 8bit", 16, "", status="failed: RuntimeError: kernel"),
      host_row("torch AdamW fused", 16, 25)], "failed: RuntimeError: kernel"),
    ([host_row("tightfit AdamW 8bit", 16, 50)], "no fp32 reference"),
    ([host_row("tightfit AdamW 8bit", 1, 50), host_row("torch AdamW fused", 1, 25)],  # only one thread measured
     "no row 'tightfit AdamW 8bit, 16'"),
])
def test_host_step_without_its_rows_is_not_measured_with_the_reason(tmp_path, rows, reason):
    write_table(tmp_path, "step_cpu_host", HOST_FIELDS, rows)
    (verdict,) = [v for t, v in verdicts(Run(tmp_path)) if t.claim.startswith("host CPU, all cores: tightfit AdamW 8-bit")]
    assert verdict.status == "not measured" and reason in verdict.measured, verdict


@settings(max_examples=30, deadline=None)
@given(ours=st.floats(0.01, 1e4), theirs=st.floats(0.01, 1e4), threshold=st.floats(0.5, 2))
def test_host_step_passes_exactly_when_the_ratio_is_at_most_the_threshold(tmp_path_factory, ours, theirs, threshold):
    folder = tmp_path_factory.mktemp("run")
    write_table(folder, "step_cpu_host", HOST_FIELDS, [host_row("ours", 16, ours), host_row("torch AdamW fused", 16, theirs)])
    verdict = host_step("ours", threshold)(Run(folder))
    assert verdict.status == ("pass" if float(str(ours)) / float(str(theirs)) <= threshold else "fail")
