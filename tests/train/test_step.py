"""train/step.py, loss.py, offload.py: the settings plan advises, as train runs them."""

import functools

import pytest
import torch
from hypothesis import given, settings, strategies as st

from tightfit.train.loss import IGNORE_INDEX, chunked_loss, full_loss, get_loss
from tightfit.train.step import StepRunner, build_optimizer_for, running_finetune
from tightfit.finetune import FineTune


def tiny_llama(vocab=61):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(config).float()


@functools.lru_cache(maxsize=1)
def shared_llama():
    return tiny_llama()


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 3), seq=st.integers(2, 24), chunk=st.integers(1, 40), ignored=st.floats(0, 0.9))
def test_chunked_loss_equals_the_full_loss(batch, seq, chunk, ignored):
    """Same value and same gradients, whatever the chunk size and the ignored labels."""
    model = shared_llama()
    model.zero_grad()
    ids = torch.randint(0, 61, (batch, seq))
    labels = ids.clone()
    labels[torch.rand(batch, seq) < ignored] = IGNORE_INDEX
    labels[0, -1] = ids[0, -1]  # at least one scored token
    full = full_loss(model, ids, labels)
    full.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    chunked = chunked_loss(model, ids, labels, chunk_tokens=chunk)
    chunked.backward()
    assert torch.allclose(chunked, full, rtol=1e-5, atol=1e-6)
    for p, g in zip(model.parameters(), grads):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6)


def test_chunked_loss_under_peft():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    ids = torch.randint(0, 61, (2, 16))
    assert torch.allclose(chunked_loss(model, ids, ids, chunk_tokens=5), full_loss(model, ids, ids), rtol=1e-5)


def test_unknown_loss_names_the_choices():
    with pytest.raises(ValueError, match="allowed: full, chunked"):
        get_loss("sparse")


def test_cpu_notes_say_what_does_not_run_as_asked():
    ran, notes = running_finetune(FineTune(precision="bf16-sr", offload_activations=True, paged_budget="1GiB"),
                                  torch.device("cpu"))
    assert ran.precision == "fp32"
    assert len(notes) == 3 and "runs as fp32 on the CPU" in notes[0]


def test_offload_optimizers_keep_their_own_masters():
    """An offload_ optimizer keeps fp32 masters on the host: train adds none on the device, and
    --in-backward with bf16 is allowed with it; on a CPU train says offload does nothing."""
    from tightfit.finetune import check_finetune
    from tightfit.train.step import _masters_needed

    bf16 = [torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))]
    assert _masters_needed(FineTune(optim="adamw_8bit", precision="bf16"), bf16)
    assert not _masters_needed(FineTune(optim="offload_adamw_8bit", precision="bf16"), bf16)
    check_finetune(FineTune(optim="offload_adamw_8bit", precision="bf16", in_backward=True))
    _, notes = running_finetune(FineTune(optim="offload_adamw_8bit", precision="fp32"), torch.device("cpu"))
    assert notes == ["--optim offload_adamw_8bit steps as adamw_8bit on the CPU: offload moves masters, state and "
                     "step from a GPU to the host, where they already are"]


def test_master_weights_step_in_fp32():
    """bf16 params + fp32 masters: the optimizer steps the masters with fp32 gradients and the
    params get the rounded masters; an update below bf16's resolution accumulates in the master."""
    param = torch.nn.Parameter(torch.ones(64, 64, dtype=torch.bfloat16))
    master = torch.nn.Parameter(param.detach().float())
    ran = FineTune(optim="sgd_32bit", precision="bf16")
    optimizer = build_optimizer_for(ran, [master], lr=1e-4, weight_decay=0.0)
    runner = StepRunner(ran, torch.device("cpu"), torch.nn.Linear(1, 1), [param], optimizer, clip=0.0,
                        masters=[(param, master)])
    for _ in range(3):
        param.grad = torch.ones_like(param)
        runner.step()
        runner.zero_grad()
    assert master.dtype == torch.float32 and param.grad is None
    assert torch.allclose(master, torch.full_like(master, 1 - 3e-4))  # 1e-4 steps, below bf16's 2^-8 spacing
    assert torch.equal(param, master.to(torch.bfloat16))


def test_paged_budget_and_stochastic_rounding_reach_the_optimizer():
    params = [torch.nn.Parameter(torch.randn(300, 300))]
    opt = build_optimizer_for(FineTune(optim="adamw_8bit", precision="bf16-sr", paged_budget="1MiB"), params, 1e-3, 0.0)
    group = opt.param_groups[0]
    assert group["stochastic_rounding"] is True and group["paged"] == "1MiB"
    opt = build_optimizer_for(FineTune(optim="adamw_8bit", paged_budget="0"), params, 1e-3, 0.0)
    assert opt.param_groups[0]["paged"] == 0


@pytest.mark.parametrize("optim, precision, paged", [("muon", "fp32", None), ("muon_8bit", "bf16", None),
                                                      ("paged_muon_4bit", "fp32", None), ("muon_8bit", "fp32", "1MiB")])
def test_train_routes_muon_by_the_models_roles(optim, precision, paged):
    """Train gives Muon the model: embeddings and the LM head run AdamW as with ``Muon(model)``
    (not by dims, which would orthogonalize the embedding), through fp32 masters too, with the
    AdamW-equivalent lr and match_rms_adamw on every path (paging included)."""
    from tightfit.optimizers_ademamix_muon import hidden_matrices

    model = tiny_llama()
    if precision == "bf16":
        model.to(torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    masters = {id(p): torch.nn.Parameter(p.detach().float()) for p in params} if precision == "bf16" else {}
    stepped = [masters.get(id(p), p) for p in params]
    opt = build_optimizer_for(FineTune(optim=optim, precision=precision, paged_budget=paged), stepped, 1e-3, 0.01,
                              model, masters)
    hidden, rest = hidden_matrices(model)
    by_rule = {g["rule"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert by_rule == {"muon": {id(masters.get(id(p), p)) for p in hidden},
                       "adamw": {id(masters.get(id(p), p)) for p in rest}}
    embedding = model.get_input_embeddings().weight
    assert id(masters.get(id(embedding), embedding)) in by_rule["adamw"]
    for group in opt.param_groups:
        assert group["lr"] == 1e-3 and group["weight_decay"] == 0.01
        assert group["rule"] == "adamw" or group["adjust_lr_fn"] == "match_rms_adamw"


def test_offload_keeps_parameters_and_host_tensors():
    from tightfit.train.offload import _pack, _unpack, offload_activations

    param = torch.nn.Parameter(torch.ones(3))
    host = torch.ones(3)
    assert _pack(param) is param and _unpack(_pack(host)) is host
    assert offload_activations(True, torch.device("cpu")).__class__.__name__ == "nullcontext"


@pytest.mark.parametrize("checkpointing,loss", [(False, "full"), (True, "chunked")])
def test_offloaded_activations_give_the_same_gradients(monkeypatch, checkpointing, loss):
    """The offload hooks (here copying every saved activation, as on a GPU) change where
    tensors wait for backward, not the gradients; also under checkpointing and the chunked
    loss, which install their own saved-tensor hooks."""
    from tightfit.train import offload

    model = tiny_llama()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, 61, (2, 16))
    get_loss(loss)(model, ids, ids).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    copied = []
    monkeypatch.setattr(offload, "moves_to_host", lambda t: not isinstance(t, torch.nn.Parameter) and
                        not copied.append(t.numel()))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: offload._pack(t), offload._unpack):
        get_loss(loss)(model, ids, ids).backward()
    assert copied  # activations did go through the host copy
    for p, g in zip(model.parameters(), expected):
        assert torch.allclose(p.grad, g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("changes", [dict(), dict(in_backward=True, optim="adamw_8bit", precision="bf16-sr"),
                                     dict(method="lora", lora_targets="qv", checkpointing=True),
                                     dict(loss="chunked", precision="bf16-autocast")])
def test_train_measures_what_the_plan_predicts(micro_config, changes):
    """On a CPU: parameters + gradients + optimizer state, measured from the live tensors,
    equal the plan's prediction of them (the GPU compares max_memory_allocated)."""
    from tightfit.train.loop import train

    result = train(micro_config(steps=2, eval_every=2, **changes).replace(checkpoints=False, save_final=False))
    assert result.predicted_peak_bytes > 0
    assert result.peak_memory_bytes == pytest.approx(result.predicted_peak_bytes, rel=0.01)
