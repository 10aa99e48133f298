"""The published-peaks table (benchmarks/planner_published.py): every row within 10% of
the published value, with the published verdict where the row names its GPU."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from planner_published import ROWS, TOLERANCE, evaluate  # noqa: E402


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.source.split(',')[0]}-{r.setup.split(':')[0]}" for r in ROWS])
def test_published_row(row):
    result = evaluate(row)
    assert abs(result["planned_allocated_gib"] / row.published_gib - 1) <= TOLERANCE, result
    assert result["plan_verdict"] == result["published_verdict"]
