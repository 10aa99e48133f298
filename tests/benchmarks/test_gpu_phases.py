"""The time box of a GPU run: budgets, interruption, carried-over time, returnable files."""

import json
import time

import pytest

import gpu_phases
from gpu_phases import Phase, check_returnable, run_phase, run_phases


@pytest.fixture
def run_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_phases, "MIN_PHASE_S", 0.5)  # these phases start no torch
    (tmp_path / "results").mkdir()
    (tmp_path / "logs").mkdir()
    return tmp_path


def python_phase(name, code, budget=5.0):
    return Phase(name, ("-c", code), {"quick": budget})


def test_a_phase_past_its_limit_is_interrupted_and_keeps_what_it_wrote(run_folder):
    code = ("import sys, time\nprint('first row', flush=True)\n"
            "try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('kept', flush=True); sys.exit(130)")
    start = time.monotonic()
    result = run_phase(python_phase("slow", code), "quick", run_folder, limit_s=3)
    assert time.monotonic() - start < 3 + gpu_phases.GRACE_S
    assert result["status"].startswith("timed out after 3 s")
    log = (run_folder / "logs" / "slow.log").read_text()
    assert "first row" in log and "kept" in log  # SIGINT first: the script could still write


def test_a_phase_that_ignores_the_interrupt_is_killed(run_folder, monkeypatch):
    monkeypatch.setattr(gpu_phases, "GRACE_S", 1)
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)"
    start = time.monotonic()
    result = run_phase(python_phase("stubborn", code), "quick", run_folder, limit_s=2)
    assert time.monotonic() - start < 2 + 1 + 5 and result["status"].startswith("timed out")


@pytest.mark.parametrize("phase,mode,status", [
    (Phase("gone", ("x.py",), {"quick": 5}, requires="benchmarks/no_such_script.py"), "quick",
     "not built (benchmarks/no_such_script.py does not exist yet)"),
    (Phase("full_only", ("-c", "pass"), {"full": 5}), "quick", "skipped in quick mode"),
    (Phase("broken", ("-c", "raise SystemExit(3)"), {"quick": 5}), "quick", "failed (exit 3)"),
    (Phase("fine", ("-c", "pass"), {"quick": 5}), "quick", "ok"),
])
def test_phase_status(run_folder, phase, mode, status):
    assert run_phase(phase, mode, run_folder, limit_s=20)["status"] == status


def test_unused_budget_carries_over_and_the_run_budget_caps_every_phase(run_folder, monkeypatch):
    monkeypatch.setattr(gpu_phases, "PHASES", [python_phase("quick_one", "pass", budget=30),
                                               python_phase("second", "pass", budget=30),
                                               python_phase("late", "pass", budget=30)])
    monkeypatch.setattr(gpu_phases, "RUN_BUDGET_S", {"quick": 40})
    statuses = run_phases("quick", run_folder)
    first, second, late = statuses.values()
    assert first["budget_s"] == 30 and 30 < second["budget_s"] <= 60 and late["budget_s"] > second["budget_s"] - 30
    assert json.loads((run_folder / "phases.json").read_text()) == statuses
    assert all(s["status"] == "ok" for s in statuses.values())


def test_a_phase_with_no_time_left_is_skipped(run_folder, monkeypatch):
    monkeypatch.setattr(gpu_phases, "MIN_PHASE_S", 2)
    monkeypatch.setattr(gpu_phases, "PHASES", [python_phase("eats_all", "import time; time.sleep(1.5)", budget=30),
                                               python_phase("starved", "pass", budget=30)])
    monkeypatch.setattr(gpu_phases, "RUN_BUDGET_S", {"quick": 3})
    statuses = run_phases("quick", run_folder)
    assert statuses["eats_all"]["status"] == "ok"
    assert statuses["starved"]["status"] == "skipped: no time left in the run's budget"


@pytest.mark.parametrize("files,problem", [
    ({"gpu_summary.md": 10, "gpu_results.tar.gz": 10}, None),
    ({f"f{i}.txt": 1 for i in range(9)}, "9 files"),
    ({"big.tar.gz": 16 * 2**20 + 1}, "big.tar.gz"),
    ({"bad name.md": 1}, "bad name.md: name"),
])
def test_what_the_device_returns(tmp_path, files, problem):
    for name, size in files.items():
        (tmp_path / name).write_bytes(b"x" * size)
    if problem is None:
        check_returnable(tmp_path)
    else:
        with pytest.raises(RuntimeError, match=problem):
            check_returnable(tmp_path)


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_the_phases_budgets_fill_the_run_budget_and_no_more(mode):
    assert sum(p.budget_s.get(mode, 0) for p in gpu_phases.PHASES) == gpu_phases.RUN_BUDGET_S[mode]


def test_the_host_cpu_step_runs_after_the_offload_phase():
    names = [p.name for p in gpu_phases.PHASES]
    assert names.index("step_cpu_host") == names.index("offload_gpu") + 1
