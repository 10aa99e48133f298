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

from tightfit.kernels import fused_kernels  # noqa: E402
from tightfit.kernels.fused_step import ELEMENTS_PER_PROGRAM, KERNEL_CODECS, KERNEL_RULES, update_constexprs  # noqa: E402

POINTER_TYPES = {"first_program": "*i64", "tensors": "*i64", "hyper_ptr": "*fp64", "nonfinite": "*i32",
                 "step_snapshot": "*fp32", "map_values0": "*fp32", "midpoints0": "*fp32", "map_values1": "*fp32",
                 "midpoints1": "*fp32"}
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
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        compile_kernel(fused_kernels.finite_check_kernel,
                       {"GRAD_DTYPE": update_constexprs("lion", 1, "fp32", dtype, dtype, False, 1)["GRAD_DTYPE"],
                        "COLUMNS": 9, "SPAN": ELEMENTS_PER_PROGRAM, "SEARCH_LEVELS": 9}, target)
    for rule, codec, (dtype, stochastic) in itertools.product(KERNEL_RULES, KERNEL_CODECS, PARAM_DTYPES):
        for nstates in STATE_COUNTS[rule]:
            compile_kernel(fused_kernels.fused_update_kernel,
                           update_constexprs(rule, nstates, codec, dtype, dtype, stochastic, 291), target)
            print("compiled", capability, rule, nstates, codec, dtype, stochastic, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 90)
