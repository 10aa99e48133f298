"""The peer table is one truth: train builds each peer from it, and the planner plans the
state bytes that the built optimizer really keeps."""

import pytest
import torch

from tightfit.peers import PEERS
from tightfit.planner.optimizer_specs import resolve_optimizer
from tightfit.state_bytes import state_bytes
from tightfit.train.peers import build_optimizer, optimizer_state_bytes

TORCH_PEERS = sorted(name for name, peer in PEERS.items() if peer.library == "torch")


@pytest.mark.parametrize("name", TORCH_PEERS)
@pytest.mark.parametrize("shape", [(64, 80), (300,)])
def test_a_torch_peer_keeps_the_state_bytes_the_planner_plans(name, shape):
    param = torch.nn.Parameter(torch.randn(shape))
    optimizer = build_optimizer(name, [param], lr=1e-3)
    for _ in range(2):
        param.grad = torch.randn(shape)
        optimizer.step()
    spec = resolve_optimizer(name)
    planned = state_bytes(spec.rule, spec.codec_for(param.dtype), shape, spec.hyper, spec.min_quantized_numel)
    assert optimizer_state_bytes(optimizer) == planned


@pytest.mark.parametrize("name", sorted(PEERS))
def test_every_peer_is_planned_with_its_own_options_and_equivalent(name):
    peer, spec = PEERS[name], resolve_optimizer(name)
    assert (spec.rule, spec.codec, spec.paged, spec.source) == (peer.rule, peer.codec, peer.paged, peer.library)
    assert spec.hyper == {k: v for k, v in peer.options.items() if k in peer.rule.defaults}
    equivalent = resolve_optimizer(peer.equivalent)
    assert equivalent.rule is peer.rule and {**peer.rule.defaults, **equivalent.hyper} == \
        {**peer.rule.defaults, **spec.hyper}, "a peer and its tightfit equivalent run the same hyperparameters"
