"""Numerical kernels: the selective scan (S6) with reference, fast pure-PyTorch, compiled CPU (numba), Triton
and CUDA implementations. ``scan_numba`` / ``scan_triton`` are imported on first use (they import numba / triton)."""
from .selective_scan import (
    SCAN_IMPLS,
    cuda_kernel_available,
    get_scan_impl,
    numba_available,
    resolve_scan_impl,
    scan_impl,
    selective_scan,
    selective_scan_cuda,
    selective_scan_fast,
    selective_scan_ref,
    set_scan_impl,
    triton_available,
)

__all__ = [
    'SCAN_IMPLS', 'cuda_kernel_available', 'get_scan_impl', 'numba_available', 'resolve_scan_impl', 'scan_impl',
    'selective_scan', 'selective_scan_cuda', 'selective_scan_fast', 'selective_scan_ref', 'set_scan_impl',
    'triton_available',
]
