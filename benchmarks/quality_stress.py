"""Adversarial quality problems for quantized optimizer states, peers side by side.

Each problem is trained from the same start by every optimizer with the same schedule;
the table reports the final loss and its ratio to fp32 torch.optim.AdamW's. Problems are
the regimes where quantized second moments fail (issue: "zero-point" of the second
moment, one element poisoning a block):

* ``mixed_scale_quadratic`` -- ½Σ sᵢ(xᵢ − x*ᵢ)² with sᵢ log-uniform over 1e-8 … 1e4,
  mixed inside every quantization block.
* ``tied_embedding_rare_rows`` -- a bigram model whose logits are E[x]·Eᵀ (the embedding
  is its own head), tokens Zipf-distributed so most rows are touched rarely.
* ``vocab_tail_finetune`` -- a tiny tied-embedding Llama trained on the head of its
  vocabulary, then fine-tuned on sequences from the tail; held-out loss on both.

Peers: bitsandbytes AdamW8bit and torchao AdamW8bit / AdamW4bit when installed (torchao
is optional: ``pip install torchao``; rows are left out without it). Every optimizer uses
its library's defaults for which tensors are quantized (≥ 4096 elements).

    python benchmarks/quality_stress.py [--problems ...] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import platform
import warnings
from pathlib import Path
from typing import Callable

import torch

import tightfit

RESULTS = Path(__file__).with_name("results")


def optimizers() -> dict[str, Callable]:
    table = {
        "torch AdamW (fp32)": lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=0.0),
        "tightfit fp32": lambda ps, lr: tightfit.AdamW(ps, lr=lr, weight_decay=0.0),
        "tightfit 8bit": lambda ps, lr: tightfit.AdamW(ps, lr=lr, weight_decay=0.0, state="8bit"),
        "tightfit 4bit": lambda ps, lr: tightfit.AdamW(ps, lr=lr, weight_decay=0.0, state="4bit"),
    }
    try:
        import bitsandbytes as bnb
        table["bnb AdamW8bit"] = lambda ps, lr: bnb.optim.AdamW8bit(ps, lr=lr, weight_decay=0.0)
    except ImportError:
        pass
    try:
        from torchao.optim import AdamW4bit, AdamW8bit
        table["torchao AdamW8bit"] = lambda ps, lr: AdamW8bit(ps, lr=lr, weight_decay=0.0)
        table["torchao AdamW4bit"] = lambda ps, lr: AdamW4bit(ps, lr=lr, weight_decay=0.0)
    except ImportError:
        pass
    return table


def cosine(opt, step: int, total: int, lr: float) -> None:
    for group in opt.param_groups:
        value = lr * 0.5 * (1 + math.cos(math.pi * step / total))
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)  # torchao keeps lr as a tensor
        else:
            group["lr"] = value


# --- problems: each returns (make params, loss(step) -> tensor for backward, final score) ---

def mixed_scale_quadratic(steps: int = 400):
    gen = torch.Generator().manual_seed(0)
    n = 8192
    scale = 10.0 ** (-8 + 12 * torch.rand(n, generator=gen))
    target = torch.randn(n, generator=gen)
    start = torch.randn(n, generator=gen)

    def params():
        return [torch.nn.Parameter(start.clone())]

    def loss(ps, step):
        return 0.5 * (scale * (ps[0] - target) ** 2).sum()

    return params, loss, lambda ps: float(loss(ps, None)), steps, 5e-2


def tied_embedding_rare_rows(steps: int = 300):
    gen = torch.Generator().manual_seed(1)
    vocab, dim, batch = 1024, 64, 256
    ranks = torch.arange(1, vocab + 1, dtype=torch.float64)
    zipf = (1 / ranks**1.2) / (1 / ranks**1.2).sum()
    next_token = torch.randperm(vocab, generator=gen)
    start = torch.randn(vocab, dim, generator=gen) * 0.1
    held_out = torch.multinomial(zipf, 4096, replacement=True, generator=torch.Generator().manual_seed(2))

    def params():
        return [torch.nn.Parameter(start.clone())]

    def ce(ps, tokens):
        emb = ps[0]
        return torch.nn.functional.cross_entropy(emb[tokens] @ emb.T, next_token[tokens])

    def loss(ps, step):
        tokens = torch.multinomial(zipf, batch, replacement=True, generator=torch.Generator().manual_seed(100 + step))
        return ce(ps, tokens)

    return params, loss, lambda ps: float(ce(ps, held_out)), steps, 1e-2


def vocab_tail_finetune(steps: int = 120):
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, seq, batch = 4096, 32, 8
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=seq)
    torch.manual_seed(3)
    start = LlamaForCausalLM(config).state_dict()

    def sequences(low: int, high: int, count: int, seed: int) -> torch.Tensor:
        # a learnable structure: each sequence walks the range with a fixed stride
        g = torch.Generator().manual_seed(seed)
        first = torch.randint(low, high, (count, 1), generator=g)
        stride = torch.randint(1, 4, (count, 1), generator=g)
        return low + (first - low + stride * torch.arange(seq)) % (high - low)

    head_eval, tail_eval = sequences(0, 512, 64, 7), sequences(3584, 4096, 64, 8)
    model_holder = {}

    def params():
        model = LlamaForCausalLM(config)
        model.load_state_dict(start)
        model_holder["model"] = model
        return list(model.parameters())

    def lm_loss(tokens):
        return model_holder["model"](input_ids=tokens, labels=tokens).loss

    def loss(ps, step):
        low, high = (0, 512) if step < steps // 2 else (3584, 4096)  # head first, then the tail
        return lm_loss(sequences(low, high, batch, 1000 + step))

    def score(ps):
        with torch.no_grad():
            return 0.5 * (float(lm_loss(head_eval)) + float(lm_loss(tail_eval)))

    return params, loss, score, steps, 3e-3


PROBLEMS = {"mixed_scale_quadratic": mixed_scale_quadratic, "tied_embedding_rare_rows": tied_embedding_rare_rows,
            "vocab_tail_finetune": vocab_tail_finetune}


def run(problem: str, name: str, make_opt) -> float:
    make_params, loss, score, steps, lr = PROBLEMS[problem]()
    torch.manual_seed(0)
    ps = make_params()
    opt = make_opt(ps, lr)
    for step in range(steps):
        cosine(opt, step, steps, lr)
        opt.zero_grad(set_to_none=True)
        loss(ps, step).backward()
        opt.step()
    final = score(ps)
    return final if math.isfinite(final) else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    device = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (CPU)"
    date = datetime.date.today().isoformat()
    rows = []
    previous = args.out / "quality_stress.csv"
    if previous.exists():  # keep the rows of problems not re-run
        with open(previous) as f:
            rows = [r for r in csv.DictReader(f) if r["problem"] not in args.problems]
    for problem in args.problems:
        results = {name: run(problem, name, make) for name, make in optimizers().items()}
        base = results["torch AdamW (fp32)"]
        for name, final in results.items():
            rows.append({"problem": problem, "optimizer": name, "final_loss": f"{final:.6g}",
                         "vs_fp32_adamw": f"{final / base:.4g}" if base > 0 else "",
                         "device": device, "date": date, "torch": torch.__version__})
            print(f"{problem:26s} {name:20s} {final:12.6g}  x{final / base:.4g}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "quality_stress.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Quality under adversarial gradients ({device}, {date}, torch {torch.__version__})", "",
             "Final loss, and ÷ fp32 torch.optim.AdamW's (same start, same cosine schedule; lr 5e-2 quadratic, "
             "1e-2 embedding, 3e-3 fine-tune).", "",
             "| problem | optimizer | final loss | ÷ fp32 AdamW |", "|---|---|---|---|"]
    lines += [f"| {r['problem']} | {r['optimizer']} | {r['final_loss']} | {r['vs_fp32_adamw']} |" for r in rows]
    (args.out / "quality_stress.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
