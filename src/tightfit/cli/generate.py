"""Generate text with a fine-tuned model: the final/ of a `tightfit train` run (a full
model, or a LoRA/QLoRA adapter loaded onto the base model it was trained on).

examples:
  tightfit generate runs/tiny "To be, or not to be"
  tightfit generate runs/lora/final "Write a haiku about memory." --max-new-tokens 60
  tightfit generate runs/tiny --temperature 0            # greedy: the same text every time
"""

from __future__ import annotations

import argparse
import sys

from ..train.errors import TrainInputError, note


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a `tightfit train --out` folder, its final/, or a saved model folder")
    parser.add_argument("prompt", nargs="?", default="", help="text to continue (default: start of a document)")
    parser.add_argument("--max-new-tokens", type=int, default=100, metavar="N", help="tokens to generate (default: 100)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="sampling temperature; 0 = greedy (default: 0.8)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")


def check_settings(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise TrainInputError(f"--max-new-tokens {args.max_new_tokens} must be >= 1")
    if args.temperature < 0:
        raise TrainInputError(f"--temperature {args.temperature} must be >= 0 (0 = greedy)")
    if not 0 < args.top_p <= 1:
        raise TrainInputError(f"--top-p {args.top_p} must be in (0, 1]")


def generate_text(loaded, prompt: str, max_new_tokens: int, temperature: float, top_p: float, seed: int,
                  device) -> str:
    """The continuation of ``prompt`` (without the prompt)."""
    import torch

    from ..train.model_loading import context_length

    tokenizer, model = loaded.tokenizer, loaded.model.to(device).eval()
    ids = [int(i) for i in tokenizer.encode(prompt)]
    if not ids:  # an empty prompt starts a new document, as after the end-of-document id in training
        if tokenizer.eos_id is None:
            raise TrainInputError("this model's tokenizer has no end-of-document id: give a non-empty prompt")
        ids = [tokenizer.eos_id]
    ctx = context_length(model)
    if ctx is not None and len(ids) + max_new_tokens > ctx:
        if len(ids) >= ctx:
            raise TrainInputError(f"the prompt is {len(ids)} tokens, the model's context {ctx}: shorten it")
        note(f"--max-new-tokens {max_new_tokens} exceeds the context ({ctx}) after the prompt: generating "
             f"{ctx - len(ids)}")
        max_new_tokens = ctx - len(ids)
    torch.manual_seed(seed)
    input_ids = torch.tensor([ids], device=device)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_id,
                                pad_token_id=tokenizer.eos_id, **sampling)
    new = [int(i) for i in output[0, len(ids):] if int(i) != tokenizer.eos_id]
    return tokenizer.decode(new)


def run(args: argparse.Namespace) -> int:
    from ..train.loop import pick_device
    from ..train.model_loading import load_finetuned

    try:
        check_settings(args)
        device = pick_device(args.device)
        loaded = load_finetuned(args.folder)
        text = generate_text(loaded, args.prompt, args.max_new_tokens, args.temperature, args.top_p, args.seed, device)
    except TrainInputError as err:
        print(f"tightfit generate: error: {err}", file=sys.stderr)
        return 2
    print(args.prompt + text)
    return 0
