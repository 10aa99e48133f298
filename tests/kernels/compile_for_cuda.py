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
from tightfit.kernels.factored_step import FACTORED_RULES, TILE_COLS, TILE_ROWS  # noqa: E402
from tightfit.rules.base import GRAD_LIMIT_ELEMENTWISE, GRAD_LIMIT_REDUCING  # noqa: E402
from tightfit.kernels.fused_step import ELEMENTS_PER_PROGRAM, KERNEL_CODECS, KERNEL_RULES, update_constexprs  # noqa: E402

POINTER_TYPES = {"first_program": "*i64", "tensors": "*i64", "hyper_ptr": "*fp64", "nonfinite": "*i32",
                 "step_snapshot": "*fp32", "map_values0": "*fp32", "midpoints0": "*fp32", "map_values1": "*fp32",
                 "midpoints1": "*fp32", "map_values": "*fp32", "midpoints": "*fp32"}
STATE_COUNTS = {"adamw": [2], "adam": [2], "lion": [1], "sgd": [0, 1], "sophiag": [2]}
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
                       {"GRAD_DTYPE": update_constexprs("lion", 1, "fp32", dtype, dtype, False, 1)["GRAD_DTYPE"],
                        "GRAD_LIMIT": limit, "COLUMNS": 9, "SPAN": ELEMENTS_PER_PROGRAM, "SEARCH_LEVELS": 9}, target)
    for rule, codec, (dtype, stochastic) in itertools.product(KERNEL_RULES, KERNEL_CODECS, PARAM_DTYPES):
        for nstates in STATE_COUNTS[rule]:
            compile_kernel(fused_kernels.fused_update_kernel,
                           update_constexprs(rule, nstates, codec, dtype, dtype, stochastic, 291), target)
            print("compiled fused", capability, rule, nstates, codec, dtype, stochastic, flush=True)

    compile_factored(target, capability)


def compile_factored(target, capability: int) -> None:
    """Every factored-rule launch: stats/finish per source, rms, and apply per codec and dtype."""
    from tightfit.kernels.fused_step import KERNEL_CODECS as CODECS, TL_DTYPES, codec_block
    for rule, codec, (dtype, stochastic) in itertools.product(FACTORED_RULES, CODECS, PARAM_DTYPES):
        selector = FACTORED_RULES[rule].selector
        kernel_codec = CODECS[codec]
        codec_args = dict(CODEC=kernel_codec.selector, VALUE_DTYPE=kernel_codec.value_dtype,
                          BLOCK=codec_block(codec))
        dtypes = dict(PARAM_DTYPE=TL_DTYPES[dtype], GRAD_DTYPE=TL_DTYPES[dtype])
        sources = [0, 1] if FACTORED_RULES[rule].instability is not None else [0]
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
