"""Adafactor's optional first moment through fp32 / 8-bit / 4-bit codecs: where the 4-bit
error comes from, and what unbiased (stochastic) rounding of the codes would change.

1. Toy (tests/rules/test_adafactor.py ``train_regression``: 64x96 least squares from zero,
   full batch, both conventions with beta1 0.9): loss after 150, 300 and 600 steps, and
   the step at which the fp32-momentum run first reached the loss each run has at step
   150 / 300 (how far behind it is, in steps).
2. The default bench (`tightfit bench` shakespeare-tiny: llama-tiny, 100 steps, seed 0):
   held-out loss of torch-convention Adafactor with beta1 0.9 momentum in each codec,
   ratio to fp32 AdamW and to fp32 momentum.

Probe codecs (defined here, not offered by tightfit): ``4bit_sr`` is the 4-bit codec
(block 128, dynamic4 signed map) with stochastic rounding between the two neighbouring
codes, so that E[decode(encode(x))] = x; ``linear4_sr`` the same over the levels k/7
(k = -7..7, plus 1/14). Every row runs on the reference path (the probes have no kernel).
Writes benchmarks/results/adafactor_momentum.csv/.md (device and date on every row).

    python benchmarks/adafactor_momentum.py [--skip-bench | --adamw | --no-clip]
"""

from __future__ import annotations

import argparse
import datetime

import torch

import tightfit
from tightfit.bench.presets import PRESETS
from tightfit.codecs.base import Encoded
from tightfit.codecs.blockwise import Blockwise4Codec, block_absmax, normalize, pack_nibbles
from tightfit.codecs.maps import QuantMap, get_map
from tightfit.codecs.registry import CODECS, register_codec
from tightfit.train.loop import build_session, evaluate, train_step
from tightfit.train.schedule import build_scheduler

from result_tables import write_results

DEVICE = "2-core CPU"


class StochasticRounding4(Blockwise4Codec):
    """4-bit blockwise codes, rounded up with probability (x − lower)/(upper − lower)."""

    name = "4bit_sr"
    signed_values = get_map("dynamic4_signed").values

    def __init__(self):
        self.signed_map = QuantMap(f"{self.name}_signed", self.signed_values)
        self.reseed(0)

    def reseed(self, seed: int) -> None:
        """Every run starts from the same random bits."""
        self.generator = torch.Generator().manual_seed(seed)

    def quant_map(self, kind):
        return self.signed_map if kind == "signed" else super().quant_map(kind)

    def encode(self, x, kind):
        if kind != "signed":
            return super().encode(x, kind)
        flat = x.detach().reshape(-1).float()
        absmax = block_absmax(flat, self.block_size)
        scaled = normalize(flat, absmax, self.block_size)
        values = self.signed_map.values
        lower = (torch.searchsorted(values, scaled, right=True) - 1).clamp(0, len(values) - 2)
        up = (scaled - values[lower]) / (values[lower + 1] - values[lower])
        codes = (lower + (torch.rand(scaled.shape, generator=self.generator) < up).long()).to(torch.uint8)
        return Encoded(self.name, kind, x.shape, {"codes": pack_nibbles(codes), "absmax": absmax})


class StochasticRoundingLinear4(StochasticRounding4):
    name = "linear4_sr"
    signed_values = torch.tensor(sorted([k / 7 for k in range(-7, 8)] + [0.5 / 7]), dtype=torch.float32)


PROBES = {cls.name: register_codec(cls) and CODECS[cls.name] for cls in (StochasticRounding4, StochasticRoundingLinear4)}
CODEC_ROWS = ("fp32", "8bit", "4bit", "4bit_sr", "linear4_sr")
CONVENTIONS = {  # the toy's settings (tests/rules/test_adafactor.py)
    "torch": {"lr": 0.3},
    "hf": {"lr": 0.02, "relative_step": False, "scale_parameter": False},
}


# The same with RMS clipping switched off (a threshold no update reaches).
NO_CLIP = {"torch": {**CONVENTIONS["torch"], "d": 1e9}, "hf": {**CONVENTIONS["hf"], "clip_threshold": 1e9}}


def toy_losses(convention: str, codec: str, steps: int, settings=CONVENTIONS) -> list[float]:
    """Loss before each step of the toy regression."""
    if codec in PROBES:
        PROBES[codec].reseed(0)
    g = torch.Generator().manual_seed(3)
    true_w = torch.randn(64, 96, generator=g)
    x = torch.randn(256, 96, generator=g)
    y = x @ true_w.T + 0.01 * torch.randn(256, 64, generator=g)
    weight = torch.zeros(64, 96, requires_grad=True)
    opt = tightfit.Adafactor([weight], convention=convention, beta1=0.9, state=codec, impl="reference",
                             **settings[convention])
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((x @ weight.T - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def toy_rows(steps: int = 600, settings=CONVENTIONS, codecs=CODEC_ROWS, label="") -> list[dict]:
    rows = []
    for convention in settings:
        reference = toy_losses(convention, "fp32", steps, settings)

        def reached(loss):  # first step (1-based) where the fp32-momentum run was at or below ``loss``
            return next(i + 1 for i, value in enumerate(reference) if value <= loss)

        for codec in codecs:
            losses = reference if codec == "fp32" else toy_losses(convention, codec, steps, settings)
            rows.append({"problem": "toy least squares", "convention": convention + label, "momentum": codec,
                         "loss@150": f"{losses[149]:.3e}", "loss@300": f"{losses[299]:.3e}",
                         "loss@600": f"{losses[599]:.3e}", "fp32_step_at_loss@150": reached(losses[149]),
                         "fp32_step_at_loss@300": reached(losses[299])})
            print(rows[-1], flush=True)
    return rows


def bench_rows(seed: int = 0, rule: str = "adafactor") -> list[dict]:
    """Held-out losses; ``rule`` "adamw": AdamW (lr 3e-3 as the bench) with its first
    moment through the codec (the second moment stays on the 4-bit codec's linear map)."""
    config = PRESETS["shakespeare-tiny"].config.replace(out=None, seed=seed)
    held_out, data = {}, None
    for label in ("adamw_32bit",) + (CODEC_ROWS if rule == "adafactor" else ("fp32", "4bit", "4bit_sr")):
        s = build_session(config.replace(optim="adamw_32bit"), data, None)
        data = s.data
        if label != "adamw_32bit":
            s.optimizer = (tightfit.Adafactor(s.params, beta1=0.9, state=label, impl="reference") if rule == "adafactor"
                           else tightfit.AdamW(s.params, lr=config.lr, weight_decay=config.weight_decay, state=label,
                                               impl="reference"))
            s.scheduler = build_scheduler(s.optimizer, config.schedule, config.warmup, config.steps, config.min_lr_ratio)
            if label in PROBES:
                PROBES[label].reseed(seed)
        for step in range(config.steps):
            train_step(s, step)
        held_out[label] = evaluate(s.model, s.data, config.batch_size, config.eval_batches, s.device)
        print(label, held_out[label], flush=True)
    return [{"problem": f"bench shakespeare-tiny seed {seed}",
             "convention": ("torch" if rule == "adafactor" else "AdamW") if label != "adamw_32bit" else "",
             "momentum": label if label != "adamw_32bit" else "(AdamW fp32)", "held_out": round(held_out[label], 4),
             "ratio_to_adamw": round(held_out[label] / held_out["adamw_32bit"], 4),
             "ratio_to_fp32_momentum": round(held_out[label] / held_out["fp32"], 4) if label != "adamw_32bit" else ""}
            for label in held_out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-bench", action="store_true", help="only the toy rows")
    ap.add_argument("--adamw", action="store_true",
                    help="instead: AdamW's first moment in 4-bit vs 4-bit stochastic rounding on the bench "
                         "(results/adafactor_momentum_adamw.*)")
    ap.add_argument("--no-clip", action="store_true",
                    help="instead: the toy rows with RMS clipping off (results/adafactor_momentum_noclip.*)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the machine is shared
    if args.no_clip:
        rows, name = toy_rows(settings=NO_CLIP, codecs=("fp32", "4bit", "4bit_sr"), label=", no clip"), \
            "adafactor_momentum_noclip"
    elif args.adamw:
        rows, name = bench_rows(rule="adamw"), "adafactor_momentum_adamw"
    else:
        rows, name = toy_rows() + ([] if args.skip_bench else bench_rows()), "adafactor_momentum"
    common = {"device": DEVICE, "date": datetime.date.today().isoformat(), "torch": torch.__version__}
    write_results(name, ["problem", "convention", "momentum", "loss@150", "loss@300", "loss@600",
                                         "fp32_step_at_loss@150", "fp32_step_at_loss@300", "held_out",
                                         "ratio_to_adamw", "ratio_to_fp32_momentum"] + list(common), rows, common)


if __name__ == "__main__":
    main()
