import pytest

from tightfit.names import OPTIMIZER_NAMES, OptimizerName
from tightfit.planner.api import plan
from tightfit.planner.model_facts import facts_from_config
from tightfit.placement.paged import CHUNK_BYTES, SLOTS
from tightfit.placement.streaming import slot_bytes
from tightfit.planner import components as C
from tightfit.planner.optimizer_specs import allowed_optimizer_names, resolve_optimizer

from planner_cases import TINY_TIED

# name: (rule, codec, paged, min_quantized_numel)
EXPECTED = {
    "adamw_8bit": ("adamw", "8bit", False, 4096),
    "paged_adamw_8bit": ("adamw", "8bit", True, 4096),
    "paged_lion_8bit": ("lion", "8bit", True, 4096),
    "adafactor": ("adafactor", "fp32", False, 4096),
    "torch:adamw": ("adamw", "param-dtype", False, 0),
    "bnb:paged_adamw_8bit": ("adamw", "8bit", True, 4096),
    "bnb:lion_8bit": ("lion", "8bit", False, 4096),
}


@pytest.mark.parametrize("name,expected", sorted(EXPECTED.items()))
def test_resolve(name, expected):
    spec = resolve_optimizer(name)
    assert (spec.rule.name, spec.codec, spec.paged, spec.min_quantized_numel) == expected


def test_every_allowed_name_resolves_and_plans():
    facts = facts_from_config(TINY_TIED, "tiny", "test")
    for name in allowed_optimizer_names():
        assert plan(facts, optim=name, seq=16, dtype="fp32", device="cpu").peak_allocated > 0


def test_unknown_optimizer_names_the_allowed():
    with pytest.raises(ValueError, match="unknown optimizer 'adamw_3bit'; allowed: .*adamw_8bit.*torch:adamw"):
        resolve_optimizer("adamw_3bit")


def test_registered_paged_option_is_read(monkeypatch):
    """Once paged names are registered (another branch), their options decide."""
    entry = OPTIMIZER_NAMES["adamw_8bit"]
    monkeypatch.setitem(OPTIMIZER_NAMES, "paged_adamw_8bit",
                        OptimizerName("paged_adamw_8bit", entry.cls, {**entry.options, "paged": "1MiB"}))
    spec = resolve_optimizer("paged_adamw_8bit")
    assert spec.paged == "1MiB" and spec.device_budget() == 2**20


@pytest.mark.parametrize("paged,budget", [(False, None), (True, 0), ("1KiB", 1024)])
def test_paged_state_is_host_bytes(monkeypatch, paged, budget):
    """The split placement/paged.py makes: smallest states resident within the budget, the
    rest on the host, streamed through SLOTS slots."""
    facts = facts_from_config(TINY_TIED, "tiny", "test")
    entry = OPTIMIZER_NAMES["adamw_8bit"]
    monkeypatch.setitem(OPTIMIZER_NAMES, "test_paged", OptimizerName("test_paged", entry.cls,
                                                                     {**entry.options, "paged": paged}))
    unpaged = plan(facts, optim="adamw_8bit", seq=16, dtype="fp32")
    result = plan(facts, optim="test_paged", seq=16, dtype="fp32")
    state = next(c for c in unpaged.components if c.name == "optimizer state").device
    comp = next(c for c in result.components if c.name == "optimizer state")
    if budget is None:
        assert (comp.device, comp.host) == (state, 0)
        return
    each = sorted(C.optimizer_state_bytes_each(C.trainables(facts, "full", "fp32", 16), resolve_optimizer("adamw_8bit"),
                                               False))
    device_state = 0
    for size in each:  # smallest first while the budget lasts
        if device_state + size > budget:
            break
        device_state += size
    assert (comp.device, comp.host) == (device_state, state - device_state)
    buffers = result.persistent - (unpaged.persistent - state + device_state)
    assert 0 < buffers <= SLOTS * max(CHUNK_BYTES, each[-1] + 64)


@pytest.mark.parametrize("optim,fused", [("adamw_8bit", True), ("lion_4bit", True), ("adafactor", False),
                                         ("came_8bit", False), ("bnb:adamw_8bit", True), ("torch:adamw", False)])
def test_gpu_plans_use_fused_kernels(optim, fused):
    facts = facts_from_config(TINY_TIED, "tiny", "test")
    # fp32 weights: no master gradient conversion at the step, only the optimizer's own temporaries
    temps = {c.name: c for c in plan(facts, optim=optim, seq=16, gpu="24GiB", precision="fp32", advise=False).components}
    cpu = {c.name: c for c in plan(facts, optim=optim, seq=16, device="cpu", precision="fp32",
                                   advise=False).components}
    step = "optimizer step temporaries"
    if fused:  # the CPU plan measures the reference implementation's temporaries
        assert temps[step].device == 0 < cpu[step].device
    else:
        assert temps[step].device == cpu[step].device


def test_paged_names_are_not_paged_twice():
    from tightfit.planner.optimizer_specs import allowed_optimizer_names, resolve_optimizer

    assert not [n for n in allowed_optimizer_names() if n.startswith("paged_paged_")]
    with pytest.raises(ValueError, match="unknown optimizer 'paged_paged_adamw_8bit'"):
        resolve_optimizer("paged_paged_adamw_8bit")
    assert resolve_optimizer("paged_adamw_8bit").paged


@pytest.mark.parametrize("name, offload", [("offload_adamw_8bit", True), ("offload_lion_32bit", True),
                                           ("adamw_8bit", False), ("paged_adamw_8bit", False)])
def test_offload_names_resolve_as_offloaded(name, offload):
    spec = resolve_optimizer(name)
    assert spec.offload is offload and spec.paged is (name.startswith("paged_"))


def test_offload_state_masters_and_grad_buffers_are_host_bytes_on_a_gpu_only():
    facts = facts_from_config(TINY_TIED, "tiny", "test")
    trainable = C.trainables(facts, "full", "bf16", 16)
    state = sum(C.optimizer_state_bytes_each(trainable, resolve_optimizer("adamw_8bit"), True))
    unoffloaded = plan(facts, optim="adamw_8bit", seq=16, precision="bf16", advise=False)
    gpu = plan(facts, optim="offload_adamw_8bit", seq=16, precision="bf16", advise=False)
    rows = {c.name: (c.device, c.host) for c in gpu.components}
    numel = sum(t.numel for t in trainable)
    assert rows["optimizer state"] == (0, state)
    assert rows["offload: fp32 master weights"] == (0, 4 * numel)
    assert rows["offload: gradient buffers"] == (0, 2 * numel)  # bf16 grads
    assert "fp32 master weights" not in rows and rows["optimizer step temporaries"] == (0, 0)
    assert gpu.host_total - unoffloaded.host_total == state + 6 * numel
    # device: no state, no device masters (4 B/param), no step temporaries
    masters = dict((c.name, c.device) for c in unoffloaded.components)["fp32 master weights"]
    assert unoffloaded.persistent - gpu.persistent == state + masters
    cpu = plan(facts, optim="offload_adamw_8bit", seq=16, precision="bf16", device="cpu", advise=False)
    assert cpu.peak_allocated == plan(facts, optim="adamw_8bit", seq=16, precision="bf16", device="cpu",
                                      advise=False).peak_allocated  # a no-op on a CPU


@pytest.mark.parametrize("settings, match", [({"precision": "bf16-sr"}, "nothing to round"),
                                             ({"paged_budget": "1GiB"}, "already keeps the whole optimizer state")])
def test_offload_refuses_stochastic_rounding_and_a_paged_budget(settings, match):
    facts = facts_from_config(TINY_TIED, "tiny", "test")
    with pytest.raises(ValueError, match=match):
        plan(facts, optim="offload_adamw_8bit", seq=16, **settings)
