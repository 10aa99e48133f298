"""One Triton tile per rule: ``update`` applies the rule to float32 tiles of one tensor.

Every tile has the same signature, so the fused kernel (kernels/fused_kernels.py) takes
the tile as a compile-time argument and knows nothing about any rule:

    update(param, grad, s0, s1, s2, s3, scalars, NSTATES) -> (param, s0, s1, s2, s3)

``s0..s3`` are the decoded states in the order of the rule's ``state_specs`` (unused ones
pass through), ``scalars`` points at this tensor's row of the float64 table that
``Rule.scalars`` filled (read with ``slot``), in the order that function returns them.
A rule names its tile in ``Kernels(triton_tile="tightfit.kernels.tiles.<name>")``.
Division and square root use the IEEE round-to-nearest forms (``div_rn``, ``sqrt_rn``)
and each coefficient is rounded once from float64 to float32, as PyTorch rounds a Python
float, so a tile computes what the rule's reference ``update`` computes.
"""
