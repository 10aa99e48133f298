"""Compile every fused-kernel variant for a CUDA target without a GPU (run as a script).

The interpreter accepts code a GPU compile rejects (e.g. reassigned constexprs), so the
CPU test suite compiles each variant to a cubin here. Must run without TRITON_INTERPRET
(the kernels must be real JITFunctions). Prints one line per variant; exits non-zero on
the first failure.
"""

import itertools
import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from tightfit.kernels import factored_kernels, fused_kernels  # noqa: E402
from tightfit.kernels.factored_step import TILE_COLS, TILE_ROWS, binding_of  # noqa: E402
from tightfit.rules import RULES  # noqa: E402
from tightfit.rules.base import GRAD_LIMIT_ELEMENTWISE, GRAD_LIMIT_REDUCING  # noqa: E402
from tightfit.kernels.fused_step import ELEMENTS_PER_PROGRAM, KERNEL_CODECS, update_constexprs  # noqa: E402

POINTER_TYPES = {"first_program": "*i64", "tensors": "*i64", "hyper_ptr": "*fp64", "scalars": "*fp64",
                 "nonfinite": "*i32", "step_snapshot": "*fp32", "maps": "*i64", "map_values": "*fp32",
                 "midpoints": "*fp32"}
# Rules stepped by the fused elementwise kernel (a Triton tile, no driver) and factored ones.
TILED = [rule for rule in RULES.values() if rule.has_triton and rule.kernels.triton_driver is None]
FACTORED = [rule for rule in RULES.values() if rule.has_triton and rule.kernels.triton_driver is not None]


def state_counts(rule) -> list[int]:
    """The state counts a rule's kernel is compiled for (with and without optional states)."""
    counts = set()
    for option in ({}, {"momentum": 0.9}, {"beta1": 0.9}):
        hyper = {**rule.defaults, **{k: v for k, v in option.items() if k in rule.defaults}}
        counts.add(len(rule.state_specs(torch.Size([8, 8]), hyper)))
    return sorted(counts)
PARAM_DTYPES = [(torch.float32, False), (torch.float16, False), (torch.bfloat16, False), (torch.bfloat16, True)]


def compile_kernel(kernel, constexprs, target):
    names = kernel.arg_names
    signature = {name: POINTER_TYPES.get(name, "constexpr") for name in names}
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(source, target=target)


def main(capability: int) -> None:
    target = GPUTarget("cuda", capability, 32)
    for dtype, limit in itertools.product((torch.float32, torch.bfloat16, torch.float16),
                                          (GRAD_LIMIT_ELEMENTWISE, GRAD_LIMIT_REDUCING)):
        compile_kernel(fused_kernels.finite_check_kernel,
                       {"GRAD_DTYPE": update_constexprs(RULES["lion"], 6, 1, "fp32", dtype, dtype, False, 1)["GRAD_DTYPE"],
                        "GRAD_LIMIT": limit, "COLUMNS": 9, "SPAN": ELEMENTS_PER_PROGRAM, "SEARCH_LEVELS": 9}, target)
    for rule, codec, (dtype, stochastic) in itertools.product(TILED, KERNEL_CODECS, PARAM_DTYPES):
        slots = len(rule.scalars(rule.defaults, 1, False))
        for nstates in state_counts(rule):
            compile_kernel(fused_kernels.fused_update_kernel,
                           update_constexprs(rule, slots, nstates, codec, dtype, dtype, stochastic, 291), target)
            print("compiled fused", capability, rule.name, nstates, codec, dtype, stochastic, flush=True)

    compile_factored(target, capability)


def compile_factored(target, capability: int) -> None:
    """Every factored-rule launch: stats/finish per source, rms, and apply per codec and dtype."""
    from tightfit.kernels.fused_step import KERNEL_CODECS as CODECS, TL_DTYPES, codec_block
    for update_rule, codec, (dtype, stochastic) in itertools.product(FACTORED, CODECS, PARAM_DTYPES):
        rule, binding = update_rule.name, binding_of(update_rule)
        selector = binding.selector
        kernel_codec = CODECS[codec]
        codec_args = dict(CODEC=kernel_codec.selector, VALUE_DTYPE=kernel_codec.value_dtype,
                          BLOCK=codec_block(codec))
        dtypes = dict(PARAM_DTYPE=TL_DTYPES[dtype], GRAD_DTYPE=TL_DTYPES[dtype])
        sources = [0, 1] if binding.instability is not None else [0]
        for source in sources:
            compile_kernel(factored_kernels.factored_stats_kernel,
                           dict(RULE=selector, SOURCE=source, TILE_ROWS=TILE_ROWS, TILE_COLS=TILE_COLS,
                                SEARCH_LEVELS=9, **codec_args, **dtypes), target)
            compile_kernel(factored_kernels.factored_finish_kernel,
                           dict(RULE=selector, SOURCE=source, SPAN=1024, SEARCH_LEVELS=9), target)
        compile_kernel(factored_kernels.factored_rms_kernel,
                       dict(RULE=selector, GRAD_DTYPE=dtypes["GRAD_DTYPE"], SPAN=ELEMENTS_PER_PROGRAM,
                            SEARCH_LEVELS=9), target)
        for momentum in ([True] if rule == "came" else [False, True]):
            compile_kernel(factored_kernels.factored_apply_kernel,
                           dict(RULE=selector, HAS_MOMENTUM=momentum, STOCHASTIC=stochastic,
                                ROWS=ELEMENTS_PER_PROGRAM // codec_block(codec), LANES=kernel_codec.lanes,
                                BITS=kernel_codec.bits, SEARCH_LEVELS=9, **codec_args, **dtypes), target)
            print("compiled factored", capability, rule, momentum, codec, dtype, stochastic, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 90)
