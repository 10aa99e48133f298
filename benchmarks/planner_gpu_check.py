"""`tightfit train`'s measured peak against `tightfit plan`'s prediction, over a matrix of
(method, optimizer, precision, checkpointing, loss) on a 1B-class Llama (random init,
byte vocabulary, so no download): on a GPU, `torch.cuda.max_memory_allocated` against
the plan's allocated peak; the issue's bar is +-5%. Each run is 3 steps of 4 x 1024
tokens in this process, one after another. Writes
benchmarks/results/planner_gpu_check.csv (device, date, versions on every row).

    python benchmarks/planner_gpu_check.py            # on a GPU (~minutes)
    python benchmarks/planner_gpu_check.py --smoke    # the same plumbing on llama-micro, CPU

On a CPU the comparison is parameters + gradients + optimizer state (train/memory.py),
which only checks the plumbing.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import sys
from pathlib import Path

import torch

from tightfit.train import model_loading
from tightfit.train.config import TrainConfig
from tightfit.train.loop import train

# Llama-3.2-1B's block shapes over the byte vocabulary (1.0B params without its 128k embedding)
ONE_B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, max_position_embeddings=2048)
BOUND = 0.05

MATRIX = [  # method, optim, precision, checkpointing, loss, in_backward
    ("full", "adamw_8bit", "bf16", False, "full", False),
    ("full", "adamw_8bit", "bf16-sr", True, "chunked", True),
    ("full", "adamw_32bit", "bf16-autocast", True, "full", False),
    ("full", "paged_adamw_8bit", "bf16-sr", True, "full", False),
    ("full", "torch:adamw", "bf16", True, "chunked", False),
    ("lora", "adamw_32bit", "bf16", False, "full", False),
    ("lora", "adamw_8bit", "bf16-autocast", True, "chunked", False),
    ("qlora", "adamw_8bit", "bf16", True, "full", False),
]


def run(model: str, case: tuple, batch: int, seq: int, chars: int) -> dict:
    method, optim, precision, ckpt, loss, inb = case
    config = TrainConfig(model=model, method=method, optim=optim, precision=precision, checkpointing=ckpt, loss=loss,
                         in_backward=inb, batch_size=batch, seq=seq, steps=3, warmup=0, eval_every=3,
                         eval_batches=1, eval_fraction=0.02, data_max_chars=chars, checkpoints=False,
                         save_final=False, progress=False, lora_r=16, out=None)
    result = train(config)
    measured, predicted = result.peak_memory_bytes, result.predicted_peak_bytes
    return {"method": method, "optim": optim, "precision": precision, "checkpointing": ckpt, "loss": loss,
            "in_backward": inb, "batch": batch, "seq": seq, "measured_bytes": measured, "predicted_bytes": predicted,
            "kind": result.peak_memory_kind,
            "measured_vs_predicted": f"{measured / predicted - 1:+.4f}" if predicted else "",
            "within_5pct": bool(predicted) and abs(measured / predicted - 1) <= BOUND}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="llama-micro on whatever device, small batches")
    args = parser.parse_args()
    if args.smoke:
        model, batch, seq, chars = "llama-micro", 2, 64, 100_000
    else:
        model_loading.BUNDLED_CONFIGS["llama-1b-bytes"] = ONE_B
        model, batch, seq, chars = "llama-1b-bytes", 4, 1024, 2_000_000
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    meta = {"device": device, "date": datetime.date.today().isoformat(), "torch": torch.__version__}
    rows = []
    for case in MATRIX:
        try:
            row = run(model, case, batch, seq, chars)
        except Exception as err:  # noqa: BLE001 -- one failing setting is a row, not the end of the matrix
            row = {"method": case[0], "optim": case[1], "precision": case[2], "error": f"{type(err).__name__}: {err}"}
        rows.append({**row, **meta})
        print(row, flush=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    fields = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    name = "planner_gpu_check_smoke.csv" if args.smoke else "planner_gpu_check.csv"
    with (Path(__file__).with_name("results") / name).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    sys.exit(0 if all(r.get("within_5pct") for r in rows) else 1)


if __name__ == "__main__":
    main()
