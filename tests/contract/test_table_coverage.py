"""The contract table (optim_table.py) has rows for every registered rule, in every codec."""

import torch

import tightfit
from optim_cases import CODECS
from optim_table import ROWS


def test_every_registered_rule_has_contract_rows_in_every_codec():
    rows = {(row.optimizer, row.codec) for row in ROWS if not row.paged}
    rules = {row.cls([torch.nn.Parameter(torch.zeros(2))], **row.base).rule.name: row.optimizer for row in ROWS}
    assert set(rules) == set(tightfit.RULES)
    assert rows == {(name, codec) for name in rules.values() for codec in CODECS}
