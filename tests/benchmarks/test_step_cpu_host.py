"""step_cpu_host.py's table: ratios against the fp32 reference at the same thread count,
the one-thread scaling, and only rows that were timed."""

import pytest
import torch

import tightfit
from step_cpu_host import BNB_ROW, DEEPSPEED_ROW, TORCH_FUSED, measured_rows, reference_row, thread_counts

OURS = "tightfit AdamW 8bit"


def tiny_opts(names):
    params = [torch.nn.Parameter(torch.zeros(64))]
    return {name: tightfit.AdamW(params, state="8bit") if name.startswith("tightfit") else
            torch.optim.AdamW(params) for name in names}


def rows_for(names):
    return {name: ("native" if name.startswith("tightfit") else "torch", None) for name in names}


@pytest.mark.parametrize("host,expected", [(16, [16, 1]), (1, [1]), (2, [2, 1])])
def test_all_threads_first_then_one(host, expected):
    assert thread_counts(host) == expected


@pytest.mark.parametrize("measured,reference", [
    ({OURS, TORCH_FUSED, DEEPSPEED_ROW}, DEEPSPEED_ROW),
    ({OURS, TORCH_FUSED}, TORCH_FUSED),
])
def test_the_reference_is_deepspeed_where_it_ran_else_torch_fused(measured, reference):
    assert reference_row(measured) == reference


def test_rows_are_ratios_at_the_same_thread_count_with_the_one_thread_speedup():
    names = [OURS, TORCH_FUSED, DEEPSPEED_ROW, BNB_ROW]
    wall16 = {OURS: [30.0, 31.0, 29.0], TORCH_FUSED: [45.0], DEEPSPEED_ROW: [40.0], BNB_ROW: [600.0]}
    cpu16 = {OURS: [480.0, 496.0, 464.0], TORCH_FUSED: [45.0 * 12], DEEPSPEED_ROW: [40.0 * 8], BNB_ROW: [600.0]}
    wall1 = {OURS: [240.0], TORCH_FUSED: [90.0], DEEPSPEED_ROW: [80.0], BNB_ROW: []}  # bnb: not timed here
    table = measured_rows({16: (wall16, cpu16), 1: (wall1, wall1)}, tiny_opts(names), rows_for(names), numel=64)
    by_key = {(r["optimizer"], r["threads"]): r for r in table}
    assert set(by_key) == {(n, 16) for n in names} | {(OURS, 1), (TORCH_FUSED, 1), (DEEPSPEED_ROW, 1)}
    ours = by_key[(OURS, 16)]
    assert (ours["status"], ours["ms_per_step"], ours["rounds"], ours["min_ms"]) == ("ok", 30.0, 3, 29.0)
    assert ours["reference"] == DEEPSPEED_ROW and ours["x_reference"] == 0.75 and ours["x_torch_fused"] == 0.667
    assert ours["x_one_thread"] == 8.0 and ours["cpu_per_wall"] == 16.0 and ours["bnb8bit_over_this"] == 20.0
    assert by_key[(OURS, 1)]["x_reference"] == 3.0 and by_key[(OURS, 1)]["bnb8bit_over_this"] == ""
    assert by_key[(BNB_ROW, 16)]["x_one_thread"] == ""


def test_without_deepspeed_the_reference_is_torch_fused_and_named():
    names = [OURS, TORCH_FUSED]
    wall = {OURS: [30.0], TORCH_FUSED: [20.0]}
    (ours, _) = measured_rows({4: (wall, wall)}, tiny_opts(names), rows_for(names), numel=64)
    assert ours["reference"] == TORCH_FUSED and ours["x_reference"] == 1.5 and ours["x_one_thread"] == ""


def test_rows_before_their_first_timed_round_are_left_out():
    names = [OURS, TORCH_FUSED]
    assert measured_rows({8: ({OURS: [], TORCH_FUSED: []}, {})}, tiny_opts(names), rows_for(names), 64) == []
