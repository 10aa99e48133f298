"""How the native kernel is assembled: one header per rule tile, registered by its file
name; the cache key covers every source file; a rule finds its tile by name."""

import dataclasses
import shutil

import pytest
import torch

import tightfit
from tightfit.impl import IMPLEMENTATIONS
from tightfit.impl.native import build
from tightfit.rules import RULES, get_rule
from tightfit.rules.base import Kernels

NATIVE_REASON = build.load_kernel()[1]
pytestmark = pytest.mark.skipif(NATIVE_REASON is not None, reason=str(NATIVE_REASON))

NEW_TILE = """#pragma once
#include "../abi.h"
namespace tf {
inline void halve_tile(const TfJob&, int64_t, float* p, float*, float* const*, int n) {
  for (int i = 0; i < n; ++i) p[i] = p[i] * 0.5f;
}
}  // namespace tf
"""


@pytest.mark.parametrize("rule", sorted(n for n, r in RULES.items() if r.has_native))
def test_every_rule_tile_is_in_the_kernel(rule):
    assert build.tile_id(get_rule(rule).kernels.native_tile) >= 0


def test_tile_ids_are_distinct_and_unknown_names_have_none():
    names = build.tile_names(build.SOURCE_DIR)
    assert sorted(build.tile_id(n) for n in names) == list(range(len(names)))
    assert build.tile_id("no_such_tile") == -1


def test_a_new_tile_is_one_file_and_changes_the_cache_key(tmp_path):
    root = tmp_path / "csrc"
    shutil.copytree(build.SOURCE_DIR, root)
    before = build.source_key(root, build.FLAGS, "c++ test")
    (root / "rules" / "halve.h").write_text(NEW_TILE)
    assert "halve" in build.tile_names(root)
    header = build.tiles_header(root)
    assert '#include "rules/halve.h"' in header and "X(halve)" in header
    after = build.source_key(root, build.FLAGS, "c++ test")
    assert after != before
    # any file counts, not only the tiles; so do the flags
    (root / "codecs.cpp").write_text((root / "codecs.cpp").read_text() + "\n// touched\n")
    assert build.source_key(root, build.FLAGS, "c++ test") not in (before, after)
    assert build.source_key(root, build.FLAGS + ["-g"], "c++ test") != build.source_key(root, build.FLAGS, "c++ test")


def test_a_rule_naming_an_absent_tile_is_unavailable():
    lion = dataclasses.replace(get_rule("lion"), kernels=Kernels(native_tile="missing_tile"))
    p = torch.randn(8, requires_grad=True)
    p.grad = torch.randn(8)
    opt = tightfit.Lion([p])
    state = opt.ensure_state(p, opt.param_groups[0])
    reason = IMPLEMENTATIONS["native"].unavailable_reason(lion, [p], [state])
    assert reason is not None and "missing_tile" in reason


def test_a_rule_without_a_tile_is_unavailable():
    lion = dataclasses.replace(get_rule("lion"), kernels=Kernels())
    p = torch.randn(8, requires_grad=True)
    opt = tightfit.Lion([p])
    state = opt.ensure_state(p, opt.param_groups[0])
    reason = IMPLEMENTATIONS["native"].unavailable_reason(lion, [p], [state])
    assert reason is not None and "no native tile" in reason


AVX2 = {"avx2", "fma", "f16c", "bmi2"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
VBMI = AVX512 | {"avx512vbmi"}
ISA_CHOICES = [  # (CPU flags, forced level, chosen level or the words of the error)
    (VBMI, None, "avx512vbmi"),
    (VBMI, "avx512", "avx512"),  # the float-permute decode on a VBMI CPU, e.g. to compare
    (AVX2 | {"avx512vbmi"}, None, "avx2"),
    (VBMI - {"avx512bw"}, None, "avx2"),
    (AVX512, "avx512vbmi", ValueError("lacks: avx512vbmi")),
    (AVX512, None, "avx512"),
    (AVX2, None, "avx2"),
    (AVX512 - {"avx512bw"}, None, "avx2"),
    (set(), None, "portable"),
    (AVX512, "avx2", "avx2"),
    (AVX512, "portable", "portable"),
    (AVX2, "avx512", ValueError("lacks: avx512f")),
    (AVX512, "sse9", ValueError("allowed: avx512vbmi, avx512, avx2, portable")),
]


def test_the_runnable_levels_are_those_whose_flags_the_cpu_has_best_first():
    assert build.runnable_levels(VBMI) == ["avx512vbmi", "avx512", "avx2", "portable"]
    assert build.runnable_levels(AVX2 | {"avx512vbmi"}) == ["avx2", "portable"]
    assert build.runnable_levels(set()) == ["portable"]
    assert build.runnable_levels()[0] == build.choose_isa(build.cpu_flags())


@pytest.mark.parametrize("flags, forced, expected", ISA_CHOICES)
def test_the_isa_level_follows_the_cpu_flags_or_the_environment(flags, forced, expected):
    if isinstance(expected, ValueError):
        with pytest.raises(ValueError, match=str(expected)):
            build.choose_isa(flags, forced)
    else:
        assert build.choose_isa(flags, forced) == expected


@pytest.mark.parametrize("level", build.runnable_levels())
def test_a_forced_level_loads_the_library_built_for_it(level, monkeypatch):
    monkeypatch.setenv(build.ISA_ENV, level)
    assert build.isa() == level
    lib, why = build.load_kernel()
    assert why is None and lib.tf_isa().decode() == level


def test_too_many_scalars_is_a_clear_error():
    from tightfit.impl.native.jobs import N_COEFFS, make_job

    p = torch.zeros(4)
    with pytest.raises(ValueError, match=f"at most {N_COEFFS}"):
        make_job(get_rule("lion"), [0.0] * (N_COEFFS + 1), p, p, [], torch.zeros(()), torch.zeros((), dtype=torch.int64), 1)
