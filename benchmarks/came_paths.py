"""CAME's native CPU path vs its reference path on the default bench (`tightfit bench`'s
shakespeare-tiny preset), and whether their gap is a bug or float order amplified.

Two measurements, each against AdamW fp32 on the same footing:

1. One step from the same state (seed 0; skipped with ``--no-lockstep``): along the native run, every
   step also runs the reference path from a copy of the same params, grads and states;
   the worst ‖Δθ_native − Δθ_reference‖ / ‖Δθ_native‖ over the tensors and the worst
   relative state difference (per state, against its absmax) over the whole run.
2. Free runs over seeds: per seed, each optimizer trains on its native path, on the
   reference path, and on the reference path perturbed only in rounding: initial weights
   nudged by one ulp in random directions, or (``--two-threads``) torch running the model
   on 2 threads instead of 1 (another summation order in its matmuls). Reported: held-out loss, ratio to AdamW
   fp32 native of that seed (the bench's ratio), and how far each run ends from its
   reference run, ‖θ − θ_reference‖ / ‖θ_reference − θ_init‖. The baseline (AdamW)
   runs its reference and perturbed paths on the first seed only (a control).

If native-vs-reference differs like reference-vs-nudged, the paths are equivalent and the
gap is the run's sensitivity, not the implementation. Writes
benchmarks/results/came_paths.csv/.md and came_paths_lockstep.csv/.md (device and date on
every row).

    python benchmarks/came_paths.py [--seeds 0,1,2,3,4] [--optims adamw_32bit,came] [--jobs 2] [--two-threads] [--no-lockstep] [--lr 3e-3] [--name came_paths]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import multiprocessing
import statistics

import torch

from tightfit.bench.presets import PRESETS
from tightfit.codecs import get_codec
from tightfit.train.loop import build_session, evaluate, train_step

from result_tables import write_results

DEVICE = "2-core CPU"

# (label, impl, initial weights nudged by one ulp, torch threads while stepping): the
# reference variants run the same code and differ only in rounding.
PATHS = (("native", "auto", False, 1), ("reference", "reference", False, 1),
         ("reference, init nudged 1 ulp", "reference", True, 1))
# With --two-threads: torch's other summation order (slow where the 2 cores are shared:
# a 2-thread pool waits for a descheduled thread at every kernel).
TWO_THREAD_PATHS = (("reference, 2 threads", "reference", False, 2), ("native, 2 threads", "auto", False, 2))


def session(config, data, impl: str, nudge_seed: int | None = None):
    s = build_session(config, data, None)
    for group in s.optimizer.param_groups:
        group["impl"] = impl
    if nudge_seed is not None:  # one ulp up or down per element: a rounding-sized perturbation
        g = torch.Generator().manual_seed(nudge_seed)
        with torch.no_grad():
            for p in s.params:
                up = torch.rand(p.shape, generator=g) < 0.5
                p.copy_(torch.nextafter(p, torch.where(up, torch.inf, -torch.inf)))
    return s


def flat(s) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in s.params])


def lockstep(config, optim: str) -> dict:
    """Worst one-step native/reference differences along the native run."""
    a = session(config.replace(optim=optim), None, "auto")
    b = session(config.replace(optim=optim), a.data, "reference")
    worst = {"update": 0.0}
    for step in range(config.steps):
        batch, labels = a.data.labeled_batch(step, config.batch_size)
        a.model(input_ids=batch, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(a.params, config.clip)
        with torch.no_grad():
            for pa, pb in zip(a.params, b.params):
                pb.copy_(pa)
                pb.grad = pa.grad.clone()
        b.optimizer.load_state_dict(copy.deepcopy(a.optimizer.state_dict()))
        for group in b.optimizer.param_groups:
            group["impl"] = "reference"
        before = [p.detach().clone() for p in a.params]
        a.optimizer.step()
        b.optimizer.step()
        for pa, pb, p0 in zip(a.params, b.params, before):
            da, db = pa.detach() - p0, pb.detach() - p0
            worst["update"] = max(worst["update"], float((da - db).norm() / da.norm().clamp_min(1e-30)))
            for key, enc in a.optimizer.state[pa].items():
                if hasattr(enc, "codec"):
                    x, y = get_codec(enc.codec).decode(enc), get_codec(enc.codec).decode(b.optimizer.state[pb][key])
                    worst[key] = max(worst.get(key, 0.0), float((x - y).abs().max() / x.abs().max().clamp_min(1e-30)))
        for s in (a, b):
            s.scheduler.step()
            s.optimizer.zero_grad(set_to_none=True)
    return worst


def free_runs(config, optims: list[str], seed: int, paths, baseline_controls: bool) -> list[dict]:
    """Each optimizer on every path, stepped side by side; the baseline (optims[0]) only
    on its native path unless ``baseline_controls``."""
    torch.set_num_threads(1)
    config = config.replace(seed=seed)
    runs = {}
    data = None
    for optim in optims:
        for label, impl, nudge, threads in paths if optim != optims[0] or baseline_controls else paths[:1]:
            s = session(config.replace(optim=optim), data, impl, 1000 + seed if nudge else None)
            data = s.data
            runs[(optim, label)] = (s, flat(s).clone(), threads)
    for step in range(config.steps):
        for s, _, threads in runs.values():
            torch.set_num_threads(threads)  # only the float order of torch's own kernels changes
            train_step(s, step)
    torch.set_num_threads(1)
    rows = []
    base = evaluate(*_eval_args(runs[(optims[0], "native")][0]))
    for (optim, label), (s, init, _) in runs.items():
        held_out = evaluate(*_eval_args(s))
        row = {"seed": seed, "optimizer": optim, "path": label, "held_out": round(held_out, 4),
               "ratio": round(held_out / base, 4), "train_loss_last": round(s.result.train_loss[-1][1], 4)}
        if (optim, "reference") in runs:
            ref, ref_init, _ = runs[(optim, "reference")]
            row["distance_to_reference"] = f"{float((flat(s) - flat(ref)).norm() / (flat(ref) - ref_init).norm()):.2e}"
        rows.append(row)
    return rows


def _eval_args(s):
    return s.model, s.data, s.config.batch_size, s.config.eval_batches, s.device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--optims", default="adamw_32bit,came", help="the first is the ratio's baseline")
    ap.add_argument("--steps", type=int, default=None, help="default: the preset's")
    ap.add_argument("--two-threads", action="store_true", help="add the 2-thread reference and native runs")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in this many processes at once")
    ap.add_argument("--no-lockstep", action="store_true", help="only the free runs (came_paths.csv)")
    ap.add_argument("--lr", type=float, default=None, help="AdamW-equivalent lr of every optimizer (default: the preset's)")
    ap.add_argument("--name", default="came_paths", help="results file name (benchmarks/results/NAME.csv)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the machine is shared; the 2-thread paths set 2 while they step
    config = PRESETS["shakespeare-tiny"].config.replace(out=None)
    if args.steps:
        config = config.replace(steps=args.steps)
    if args.lr:
        config = config.replace(lr=args.lr)
    optims = args.optims.split(",")
    today = datetime.date.today().isoformat()
    common = {"device": DEVICE, "date": today, "lr": config.lr, "torch": torch.__version__}

    paths = PATHS + (TWO_THREAD_PATHS if args.two_threads else ())
    steps_rows = []
    for optim in optims if not args.no_lockstep else ():
        worst = lockstep(config, optim)
        steps_rows.append({"optimizer": optim, "steps": config.steps,
                           **{f"max_{k}": f"{v:.1e}" for k, v in worst.items()}})
        print(steps_rows[-1], flush=True)
    keys = sorted({k for row in steps_rows for k in row})
    if steps_rows:
        write_results(f"{args.name}_lockstep", ["optimizer", "steps", "max_update"]
                      + [k for k in keys if k.startswith("max_") and k != "max_update"] + list(common), steps_rows, common)

    seeds = [int(x) for x in args.seeds.split(",")]
    jobs = [(config, optims, seed, paths, seed == seeds[0]) for seed in seeds]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:  # one seed per worker
        rows = [row for seed_rows in pool.starmap(free_runs, jobs) for row in seed_rows]
    for row in rows:
        print(row, flush=True)
    for optim in optims:
        for path in (label for label, *_ in paths):
            mine = [r for r in rows if r["optimizer"] == optim and r["path"] == path and isinstance(r["seed"], int)]
            if not mine:
                continue
            ratios = [r["ratio"] for r in mine]
            rows.append({"seed": f"mean of {len(mine)}", "optimizer": optim, "path": path,
                         "held_out": round(statistics.mean(r["held_out"] for r in mine), 4),
                         "ratio": round(statistics.mean(ratios), 4),
                         "ratio_stdev": round(statistics.stdev(ratios), 4) if len(ratios) > 1 else ""})
    write_results(args.name, ["seed", "optimizer", "path", "held_out", "ratio", "ratio_stdev", "train_loss_last",
                                 "distance_to_reference"] + list(common), rows, common)


if __name__ == "__main__":
    main()
