"""The GPU run's test phase on an image without the peers: collection never breaks, and a
test that needs a missing peer skips with the reason."""

from hidden_packages import GPU_IMAGE_MAY_LACK, run_python_without

HIDDEN = set(GPU_IMAGE_MAY_LACK)
REPORT_HIDDEN = f"import importlib.util\nprint('still found:', [m for m in {sorted(HIDDEN)!r} if importlib.util.find_spec(m)])\n"


def pytest_child(args: list[str]) -> str:
    return REPORT_HIDDEN + f"import sys, pytest\nsys.exit(pytest.main({['-p', 'no:cacheprovider'] + args!r}))\n"


def test_gpu_tests_collect_without_errors_when_the_peers_are_missing(tmp_path):
    done = run_python_without(HIDDEN, pytest_child(["-m", "gpu", "--collect-only", "-q", "tests"]), tmp_path)
    out = done.stdout + done.stderr
    assert "still found: []" in out  # the packages really are absent in the child
    assert done.returncode == 0, out[-3000:]
    assert "error" not in out.lower().split("still found: []")[1], out[-3000:]
    # the GPU tests themselves are among what was collected
    for gpu_test in ("test_fused_step.py::test_gpu_matches_reference", "test_paged_gpu.py::test_paged_equals_unpaged"):
        assert gpu_test in out


# test id -> the package whose absence must skip it
NEEDS_PEER = {
    "tests/rules/test_came.py::test_matches_came_pytorch[readme]": "came_pytorch",
    "tests/test_optimizers.py::test_fp32_equals_external_reference_over_100_steps[lion-reference]": "lion_pytorch",
}


def test_a_test_needing_a_missing_peer_skips_with_the_reason(tmp_path):
    done = run_python_without(HIDDEN, pytest_child(["-q", "-rs", *NEEDS_PEER]), tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert f"{len(NEEDS_PEER)} skipped" in out, out[-3000:]
    for module in NEEDS_PEER.values():
        assert f"needs {module} (pip install" in out
