"""Writing a benchmark's rows as CSV + markdown under benchmarks/results/ (one schema per file)."""

from __future__ import annotations

import csv
from pathlib import Path

RESULTS = Path(__file__).with_name("results")


def write_results(name: str, fields: list[str], rows: list[dict], common: dict) -> None:
    """``results/<name>.csv`` and ``.md``: every row gets every field (blank when absent)
    and the ``common`` columns (device, date, versions)."""
    RESULTS.mkdir(exist_ok=True)
    rows = [{**{k: "" for k in fields}, **row, **common} for row in rows]
    with open(RESULTS / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with open(RESULTS / f"{name}.md", "w") as f:
        f.write("| " + " | ".join(fields) + " |\n|" + "---|" * len(fields) + "\n")
        for row in rows:
            f.write("| " + " | ".join(str(row[k]) for k in fields) + " |\n")
    print(f"wrote {RESULTS / name}.csv and .md")
