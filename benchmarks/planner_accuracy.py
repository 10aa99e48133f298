"""Planner accuracy on CPU: measured (real step) vs simulated (fake tensors) vs analytic
peaks of live tensor bytes, over the matrix the planner tests check
(tests/planner/planner_cases.py MATRIX, QLORA_MATRIX; test_simulate.py BF16_MATRIX and
SETTINGS_MATRIX). Writes
benchmarks/results/planner_accuracy.csv (device, date and versions on every row).

    python benchmarks/planner_accuracy.py
"""

from __future__ import annotations

import csv
import datetime
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "planner"))

from planner_cases import MATRIX, QLORA_MATRIX, case_id  # noqa: E402
from test_simulate import BF16_MATRIX, SETTINGS_MATRIX  # noqa: E402

from tightfit.planner.api import plan  # noqa: E402
from tightfit.planner.model_facts import facts_from_config  # noqa: E402
from tightfit.planner.optimizer_specs import resolve_optimizer  # noqa: E402
from tightfit.planner.simulate import measure_step  # noqa: E402


def rows():
    for case in MATRIX:
        cfg, method, optim, batch, seq, ckpt, inb = case
        kw = dict(method=method, batch=batch, seq=seq, lora_rank=8, checkpointing=ckpt, in_backward=inb, dtype="fp32")
        simulated = measure_step(cfg, resolve_optimizer(optim), fake=True, **kw).peak_bytes
        measured = measure_step(cfg, resolve_optimizer(optim), fake=False, **kw).peak_bytes
        analytic = plan(facts_from_config(cfg, "tiny", "test"), optim=optim, device="cpu", advise=False, **kw).peak_allocated
        yield case_id(case), "fp32", measured, simulated, analytic
    for cfg, method, optim, ckpt, sr in BF16_MATRIX:
        result = plan(facts_from_config(cfg, "tiny", "test"), method=method, optim=optim, batch=4, seq=64,
                      lora_rank=8, checkpointing=ckpt, stochastic_rounding=sr, dtype="bf16", simulate=True, device="cpu",
                      advise=False)
        name = f"{'tied' if cfg['tie_word_embeddings'] else 'untied'}-{method}-{optim}-4x64" + ("-ckpt" if ckpt else "")
        yield name + ("-sr" if sr else ""), "bf16", "", result.simulation["peak_bytes"], result.peak_allocated
    for cfg, settings in SETTINGS_MATRIX:  # FineTune settings: precision modes, chunked loss, LoRA targets
        result = plan(facts_from_config(cfg, "tiny", "test"), simulate=True, device="cpu", advise=False, **settings)
        name = (f"{'tied' if cfg['tie_word_embeddings'] else 'untied'}-" + "-".join(
            f"{v}" for k, v in settings.items() if k not in ("batch_size", "seq", "lora_r")) +
            f"-{settings['batch_size']}x{settings['seq']}")
        yield name, settings["precision"], "", result.simulation["peak_bytes"], result.peak_allocated
    for cfg, optim, batch, seq, ckpt in QLORA_MATRIX:
        kw = dict(method="qlora", batch=batch, seq=seq, lora_rank=8, checkpointing=ckpt, dtype="fp32")
        measured = measure_step(cfg, resolve_optimizer(optim), fake=False, **kw).peak_bytes
        analytic = plan(facts_from_config(cfg, "tiny", "test"), optim=optim, device="cpu", advise=False, **kw).peak_allocated
        name = f"{'tied' if cfg['tie_word_embeddings'] else 'untied'}-qlora-{optim}-{batch}x{seq}" + ("-ckpt" if ckpt else "")
        yield name, "fp32", measured, "", analytic


def main() -> None:
    torch.set_num_threads(1)
    import transformers

    meta = {"device": platform.processor() or platform.machine(), "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "transformers": transformers.__version__}
    out = []
    for name, dtype, measured, simulated, analytic in rows():
        reference = simulated if simulated != "" else measured
        row = {"case": name, "dtype": dtype, "measured_bytes": measured, "simulated_bytes": simulated,
               "analytic_bytes": analytic,
               "simulated_vs_measured": f"{simulated / measured - 1:+.4f}" if measured != "" and simulated != "" else "",
               "analytic_vs_reference": f"{analytic / reference - 1:+.4f}", **meta}
        print(f"{name:44s} {dtype}  measured {measured!s:>9}  simulated {simulated!s:>9}  analytic {analytic:>9}"
              f"  sim/meas {row['simulated_vs_measured']:>8}  analytic/ref {row['analytic_vs_reference']}")
        out.append(row)
    path = Path(__file__).with_name("results") / "planner_accuracy.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
