"""The GPU run's test phase on an image without the peers: collection never breaks, and a
test that needs a missing peer skips with the reason."""

import pytest

from hidden_packages import GPU_IMAGE_MAY_LACK, environment_without, run_without

PYTEST = ["python3", "-m", "pytest", "-p", "no:cacheprovider"]
# test id -> the package whose absence must skip it
NEEDS_PEER = {
    "tests/rules/test_came.py::test_matches_came_pytorch[readme]": "came_pytorch",
    "tests/test_optimizers.py::test_fp32_equals_external_reference_step_by_step[lion-reference]": "lion_pytorch",
}


@pytest.fixture(scope="module")
def without_peers(tmp_path_factory):
    """Environment where ``python3`` lacks every package the GPU image may lack."""
    env = environment_without(set(GPU_IMAGE_MAY_LACK), tmp_path_factory.mktemp("no_peers"))
    probe = run_without(["python3", "-c", "import importlib.util as u; print([m for m in %r if u.find_spec(m)])"
                         % (GPU_IMAGE_MAY_LACK,)], env)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr  # really absent
    return env


def test_gpu_tests_collect_without_errors_when_the_peers_are_missing(without_peers):
    done = run_without(PYTEST + ["-m", "gpu", "--collect-only", "-q", "tests"], without_peers)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "error" not in out.lower(), out[-3000:]
    for gpu_test in ("test_fused_step.py::test_gpu_matches_reference", "test_paged_gpu.py::test_paged_equals_unpaged"):
        assert gpu_test in out


def test_a_test_needing_a_missing_peer_skips_with_the_reason(without_peers):
    done = run_without(PYTEST + ["-q", "-rs", *NEEDS_PEER], without_peers)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert f"{len(NEEDS_PEER)} skipped" in out, out[-3000:]
    for module in NEEDS_PEER.values():
        assert f"needs {module} (pip install" in out
