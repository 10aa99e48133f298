"""Child process of test_simulate.py: measured (real CPU) and simulated (fake) peaks of
the planner matrix as JSON on stdout.

It runs in its own process with one intra-op thread (OMP/MKL_NUM_THREADS=1, set by the
parent's environment): tiny steps are ~10x faster single-threaded on a shared CPU, and
calling torch.set_num_threads inside the test process would slow every later test.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from planner_cases import MATRIX, QLORA_MATRIX, case_id, qlora_case  # noqa: E402

from tightfit.planner.optimizer_specs import resolve_optimizer  # noqa: E402
from tightfit.planner.simulate import measure_step  # noqa: E402


def peaks(case, fake: bool) -> int:
    cfg, method, optim, batch, seq, ckpt, inb = case
    return measure_step(cfg, resolve_optimizer(optim), method=method, batch=batch, seq=seq, lora_rank=8,
                        checkpointing=ckpt, in_backward=inb, dtype="fp32", fake=fake).peak_bytes


def main() -> None:
    out = {case_id(c): {"measured": peaks(c, False), "simulated": peaks(c, True)} for c in MATRIX}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        pass
    else:
        out.update({case_id(qlora_case(c)): {"measured": peaks(qlora_case(c), False)} for c in QLORA_MATRIX})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
