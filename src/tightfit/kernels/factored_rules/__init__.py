"""Each factored rule's binding to the shared factored Triton kernels (factored_kernels.py):
its selector, its hyperparameter slots and its statistics' names (``BINDING``). A rule
names its module in ``Kernels(triton_tile=...)``; factored_step.py drives the kernels."""
