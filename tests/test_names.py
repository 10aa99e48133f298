"""The optimizer names: one table (names.FAMILIES) -> codec variants and bare names ->
paged and offload variants, whatever the order of its rows."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tightfit import AdamW, create_optimizer
from tightfit.codecs import CODECS
from tightfit.names import CODEC_SUFFIX, FAMILIES, OFFLOAD_PREFIX, OPTIMIZER_NAMES, PAGED_PREFIX, Family, catalog


@settings(max_examples=20, deadline=None)
@given(st.permutations(FAMILIES))
def test_the_catalog_does_not_depend_on_row_order(rows):
    assert catalog(tuple(rows)) == catalog(FAMILIES)


def test_every_name_has_its_paged_and_offload_twins_and_every_family_its_codecs():
    base = {n: e for n, e in OPTIMIZER_NAMES.items() if not n.startswith((PAGED_PREFIX, OFFLOAD_PREFIX))}
    for name, entry in base.items():
        assert OPTIMIZER_NAMES[PAGED_PREFIX + name].options == {**entry.options, "paged": True}
        assert OPTIMIZER_NAMES[OFFLOAD_PREFIX + name].options == {**entry.options, "offload": True}
    assert len(OPTIMIZER_NAMES) == 3 * len(base)  # no paged offload names: the two exclude each other
    for family in FAMILIES:
        for codec in CODECS:
            entry = OPTIMIZER_NAMES[f"{family.prefix}_{CODEC_SUFFIX.get(codec, codec)}"]
            assert entry.cls is family.cls and entry.options == {**family.options, "state": codec}
        assert (family.prefix in OPTIMIZER_NAMES) == (family.bare_options is not None)


def test_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="'adamw_32bit' registered twice"):
        catalog((Family("adamw", AdamW), Family("adamw", AdamW)))


def test_create_optimizer_applies_the_options_and_lets_keywords_override():
    param = torch.nn.Parameter(torch.randn(8, 8))
    opt = create_optimizer("paged_adafactor_8bit", [param], beta1=0.8)
    group = opt.param_groups[0]
    assert (group["state"], group["paged"], group["beta1"]) == ("8bit", True, 0.8)
    with pytest.raises(ValueError, match="unknown optimizer name 'adamw_3bit'"):
        create_optimizer("adamw_3bit", [param])
