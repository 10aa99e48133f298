"""Writing a benchmark's rows as CSV + markdown under benchmarks/results/ (one schema per file)."""

from __future__ import annotations

import csv
from pathlib import Path

RESULTS = Path(__file__).with_name("results")


def write_results(name: str, fields: list[str], rows: list[dict], common: dict, results: Path = RESULTS,
                  quiet: bool = False) -> None:
    """``<results>/<name>.csv`` and ``.md``: every row gets every field (blank when absent)
    and the ``common`` columns (device, date, versions). Scripts call it after every row,
    so a run cut short by its time budget keeps what it measured."""
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    rows = [{**{k: "" for k in fields}, **row, **common} for row in rows]
    with open(results / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with open(results / f"{name}.md", "w") as f:
        f.write("| " + " | ".join(fields) + " |\n|" + "---|" * len(fields) + "\n")
        for row in rows:
            f.write("| " + " | ".join(str(row[k]) for k in fields) + " |\n")
    if not quiet:
        print(f"wrote {results / name}.csv and .md")
