"""Numerical kernels: the selective scan (S6) with reference, fast pure-PyTorch, compiled CPU (numba), Triton
and CUDA implementations, and the ViM mixer's causal depthwise conv + SiLU (pure PyTorch, compiled CPU).
``scan_numba`` / ``scan_triton`` / ``conv_numba`` are imported on first use (they import numba / triton)."""
from .conv1d import CONV_IMPLS, causal_conv1d_silu, causal_conv1d_silu_ref, resolve_conv_impl
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
    'CONV_IMPLS', 'causal_conv1d_silu', 'causal_conv1d_silu_ref', 'resolve_conv_impl',
    'SCAN_IMPLS', 'cuda_kernel_available', 'get_scan_impl', 'numba_available', 'resolve_scan_impl', 'scan_impl',
    'selective_scan', 'selective_scan_cuda', 'selective_scan_fast', 'selective_scan_ref', 'set_scan_impl',
    'triton_available',
]
