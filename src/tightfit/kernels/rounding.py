"""Stochastic rounding of float32 to bfloat16, in plain PyTorch (the kernels' reference).

A float32 x keeps its high 16 bits (the bfloat16) after adding a random 16-bit integer
r to its bit pattern: the magnitude rounds away from zero with probability
(low 16 bits of x) / 2^16, so E[round(x)] = x (Zamirai et al. 2020, arXiv 2010.06192).
NaN keeps round-to-nearest (adding r could carry into the sign).

r is the low 16 bits of the first word of Philox4x32-10 (Salmon et al. 2011, "Parallel
random numbers: as easy as 1, 2, 3") with key (seed, salt) and counter
(element index, step, 0, 0): counter-based, so the kernel and this function draw the same
numbers for the same element without sharing any generator state.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_ROUND_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_KEY_INCREMENTS = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUNDS = 10


def _mulhilo32(constant: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of constant * x for uint32 values held in int64.

    Split x in 16-bit halves so no intermediate product leaves int64's range.
    """
    low_part = constant * (x & 0xFFFF)  # < 2^48
    high_part = constant * (x >> 16)  # < 2^48
    mixed = low_part + ((high_part & 0xFFFF) << 16)  # < 2^49
    return (high_part >> 16) + (mixed >> 32), mixed & _MASK32


def philox4x32(c0, c1, c2, c3, k0: int, k1: int, rounds: int = PHILOX_ROUNDS):
    """Philox4x32 over int64 tensors holding uint32 counters; returns the four words."""
    for _ in range(rounds):
        hi0, lo0 = _mulhilo32(_ROUND_MULTIPLIERS[0], c0)
        hi1, lo1 = _mulhilo32(_ROUND_MULTIPLIERS[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _KEY_INCREMENTS[0]) & _MASK32
        k1 = (k1 + _KEY_INCREMENTS[1]) & _MASK32
    return c0, c1, c2, c3


def random_bits16(numel: int, *, seed: int, salt: int, step: int, device=None) -> torch.Tensor:
    """The 16 random bits (int64 in [0, 2^16)) the kernels draw for elements 0..numel-1."""
    index = torch.arange(numel, dtype=torch.int64, device=device)
    step_word = torch.full_like(index, int(step) & _MASK32)
    zero = torch.zeros_like(index)
    word, _, _, _ = philox4x32(index, step_word, zero, zero, int(seed) & _MASK32, int(salt) & _MASK32)
    return word & 0xFFFF


def stochastic_round_to_bf16(x: torch.Tensor, *, seed: int, salt: int, step: int) -> torch.Tensor:
    """bfloat16 of float32 ``x`` rounded stochastically with the kernels' random bits.

    ``seed`` and ``salt`` (the tensor's id) form the Philox key, ``step`` is the
    optimizer step the rounding belongs to; element i of the flattened tensor uses
    counter i.
    """
    flat = x.detach().reshape(-1).float()
    bits = flat.view(torch.int32).to(torch.int64) & _MASK32
    noise = random_bits16(flat.numel(), seed=seed, salt=salt, step=step, device=x.device)
    high = ((bits + noise) >> 16) & 0xFFFF
    rounded = high.to(torch.int32).to(torch.int16).view(torch.bfloat16)  # int32->int16 wraps, keeps 16 bits
    rounded = torch.where(torch.isnan(flat), flat.to(torch.bfloat16), rounded)
    return rounded.view(x.shape)
