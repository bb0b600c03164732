"""helios_kernels: Triton kernels of the runtime, each with its torch reference and a CPU test.

Imported as `helios_kernels` (the folder is `kernels/`; PyPI already has a `kernels` package).
Empty until the performance work (issue 7) lands its first kernel.
"""
