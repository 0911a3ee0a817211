"""Selective scan (the S6 recurrence of Mamba) behind one dispatch point.

Four implementations share the signature and semantics of mamba-ssm's ``selective_scan_ref``
(https://github.com/state-spaces/mamba, ``mamba_ssm/ops/selective_scan_interface.py``)::

    delta = softplus(delta + delta_bias)          (each step optional)
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t      (B-bar = delta * B, not ZOH)
    y_t   = C_t . h_t + D * u_t
    out_t = y_t * SiLU(z_t)

with u, delta, z ``(B, E, L)``, real A ``(E, N)``, input-dependent B, C ``(B, N, L)``, D and delta_bias ``(E,)``.
Everything is accumulated in fp32; the output has u's dtype.

* ``'ref'``  :func:`selective_scan_ref`, the sequential reference (autograd through a Python loop).
* ``'fast'`` :func:`selective_scan_fast`, pure PyTorch, runs on CPU and GPU. Forward and backward are a custom
  ``torch.autograd.Function``: time is processed in chunks of a few steps laid out as ``(T, B, N, E)`` (E innermost,
  so the per-step update is one ``addcmul_`` on a contiguous slice and ``y`` is one batched matmul per chunk); only
  the states at chunk boundaries are kept for backward, which recomputes each chunk and runs the adjoint recurrence
  in reverse. Same arithmetic as the reference, so it agrees to fp32 rounding.
* ``'numba'`` :func:`vim_wsss.ops.scan_numba.selective_scan_numba`, a compiled CPU kernel (forward and backward,
  parallel over batch x channel blocks, compile-once disk cache; see that module for compile time and threads).
* ``'triton'`` :func:`vim_wsss.ops.scan_triton.selective_scan_triton`, a Triton kernel for CUDA tensors (forward and
  backward; on CPU only under Triton's interpreter, ``TRITON_INTERPRET=1``, which the tests use).
* ``'cuda'`` mamba-ssm's ``selective_scan_fn`` kernel, used when it is importable and the tensors are on CUDA.

Choose with :func:`set_scan_impl` (one of ``SCAN_IMPLS``), the environment variable ``VIM_WSSS_SCAN``, the context
manager :func:`scan_impl`, or the ``impl`` argument of :func:`selective_scan`. ``'auto'`` picks, for CUDA tensors,
mamba-ssm's kernel when it is installed, else the Triton kernel when triton imports, else ``'fast'``; for CPU
tensors ``'numba'`` when numba imports, else ``'fast'`` (with a one-time warning giving the import error).

``selective_scan(..., reverse=True)`` scans from the last token to the first (the ViM backward direction); the numba
and Triton kernels do this natively, the other implementations flip their sequence inputs and output.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from typing import Callable, Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    'selective_scan', 'selective_scan_ref', 'selective_scan_fast', 'selective_scan_cuda',
    'set_scan_impl', 'get_scan_impl', 'resolve_scan_impl', 'scan_impl', 'cuda_kernel_available', 'numba_available',
    'triton_available', 'SCAN_IMPLS',
]

SCAN_IMPLS = ('auto', 'ref', 'fast', 'numba', 'triton', 'cuda')
ENV_VAR = 'VIM_WSSS_SCAN'
CUDA_INSTALL_HINT = (
    "mamba-ssm's CUDA selective-scan kernel is not available. It needs a CUDA build of torch and nvcc; install with\n"
    "  MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation mamba-ssm==2.3.2.post1\n"
    "(MAMBA_FORCE_BUILD avoids the prebuilt-wheel download that fails without network; see "
    "docs install-notes.md section 6). Or use scan impl 'fast' (pure PyTorch, exact), e.g. VIM_WSSS_SCAN=fast."
)

_impl_override: Optional[str] = None
_cuda_fn: Optional[Callable] = None
_cuda_checked = False
_numba_fn: Optional[Callable] = None
_numba_error: Optional[str] = None  # why numba could not be imported, once tried
_triton_fn: Optional[Callable] = None
_triton_error: Optional[str] = None

ScanOutput = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------------------------------------------
# implementation choice
# ----------------------------------------------------------------------------------------------------------------
def _validate_name(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in SCAN_IMPLS:
        raise ValueError(f'{source}: unknown selective-scan implementation {name!r}; choose one of {SCAN_IMPLS}.')
    return name


def set_scan_impl(name: Optional[str]) -> None:
    """Set the process-wide scan implementation.

    Args:
        name: one of ``SCAN_IMPLS``; None goes back to the environment variable ``VIM_WSSS_SCAN``
            (default 'auto').
    """
    global _impl_override
    if name is None:
        _impl_override = None
        return
    name = _validate_name(name, 'set_scan_impl')
    if name == 'cuda' and not cuda_kernel_available():
        raise RuntimeError(CUDA_INSTALL_HINT)
    if name == 'numba' and not numba_available():
        raise RuntimeError(_numba_hint())
    if name == 'triton' and not triton_available():
        raise RuntimeError(_triton_hint())
    _impl_override = name


def get_scan_impl() -> str:
    """Return the configured implementation name (one of ``SCAN_IMPLS``), before resolving 'auto'."""
    if _impl_override is not None:
        return _impl_override
    return _validate_name(os.environ.get(ENV_VAR, 'auto') or 'auto', f'environment variable {ENV_VAR}')


@contextlib.contextmanager
def scan_impl(name: str) -> Iterator[None]:
    """Context manager that sets the scan implementation and restores the previous setting on exit."""
    global _impl_override
    previous = _impl_override
    set_scan_impl(name)
    try:
        yield
    finally:
        _impl_override = previous


def _load_cuda_kernel() -> Optional[Callable]:
    global _cuda_fn, _cuda_checked
    if _cuda_checked:
        return _cuda_fn
    _cuda_checked = True
    try:
        import selective_scan_cuda  # noqa: F401  the compiled extension of mamba-ssm
        if not hasattr(selective_scan_cuda, 'fwd'):  # an import stub (CPU installs), not the kernel
            return None
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken build raising something else at import
        return None
    _cuda_fn = selective_scan_fn
    return _cuda_fn


def cuda_kernel_available() -> bool:
    """True when mamba-ssm's compiled selective-scan kernel can be imported and CUDA is available."""
    return torch.cuda.is_available() and _load_cuda_kernel() is not None


def _load_numba_kernel() -> Optional[Callable]:
    global _numba_fn, _numba_error
    if _numba_fn is None and _numba_error is None:
        try:
            from .scan_numba import selective_scan_numba
        except Exception as err:  # ImportError, or a broken numba/llvmlite install
            _numba_error = f'{type(err).__name__}: {err}'
        else:
            _numba_fn = selective_scan_numba
    return _numba_fn


def numba_available() -> bool:
    """True when the compiled CPU scan (numba) can be imported."""
    return _load_numba_kernel() is not None


def _numba_hint() -> str:
    return (f"the compiled CPU scan needs numba ({_numba_error}); install it with `pip install numba==0.68.1` "
            f"(requirements.txt), or use scan impl 'fast' (pure PyTorch), e.g. VIM_WSSS_SCAN=fast.")


def _load_triton_kernel() -> Optional[Callable]:
    global _triton_fn, _triton_error
    if _triton_fn is None and _triton_error is None:
        try:
            from .scan_triton import selective_scan_triton
        except Exception as err:  # ImportError, or a triton that fails to initialise
            _triton_error = f'{type(err).__name__}: {err}'
        else:
            _triton_fn = selective_scan_triton
    return _triton_fn


def _triton_interpreted() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def triton_available() -> bool:
    """True when the Triton scan imports and can run here (CUDA, or Triton's interpreter)."""
    if not (torch.cuda.is_available() or _triton_interpreted()):
        return False
    return _load_triton_kernel() is not None


def _triton_hint() -> str:
    reason = _triton_error or 'no CUDA device (set TRITON_INTERPRET=1 to run it interpreted on CPU, for tests)'
    return f"selective scan impl 'triton' is not available: {reason}. Triton ships with CUDA builds of torch."


def _auto_cuda_impl() -> str:
    if _load_cuda_kernel() is not None:
        return 'cuda'
    return 'triton' if _load_triton_kernel() is not None else 'fast'


def _auto_cpu_impl() -> str:
    if numba_available():
        return 'numba'
    warnings.warn(f"selective scan 'auto' uses 'fast' on CPU: {_numba_hint()}", RuntimeWarning, stacklevel=3)
    return 'fast'


def resolve_scan_impl(u: torch.Tensor, impl: Optional[str] = None) -> str:
    """Resolve the implementation used for a tensor: ``impl`` or the global choice, with 'auto' made concrete.

    Args:
        u: the scan input (only its device matters).
        impl: explicit name, or None for :func:`get_scan_impl`.

    Returns:
        a concrete name. 'auto' is, for CUDA tensors, 'cuda' with mamba-ssm installed, else 'triton' when triton
        imports, else 'fast'; for CPU tensors 'numba' when numba imports (else 'fast', warning once why).
    """
    name = get_scan_impl() if impl is None else _validate_name(impl, 'selective_scan(impl=...)')
    if name == 'auto':
        if u.is_cuda:
            return _auto_cuda_impl()
        return _auto_cpu_impl() if u.device.type == 'cpu' else 'fast'
    if name == 'triton':
        if _load_triton_kernel() is None or not (u.is_cuda or _triton_interpreted()):
            raise RuntimeError(_triton_hint())
    if name == 'numba':
        if _load_numba_kernel() is None:
            raise RuntimeError(_numba_hint())
        if u.device.type != 'cpu':
            raise RuntimeError("selective scan impl 'numba' needs CPU tensors; use 'auto' for CUDA tensors.")
    if name == 'cuda':
        if _load_cuda_kernel() is None:
            raise RuntimeError(CUDA_INSTALL_HINT)
        if not u.is_cuda:
            raise RuntimeError("selective scan impl 'cuda' needs CUDA tensors; use 'fast' or 'auto' for CPU tensors.")
    return name


# ----------------------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------------------
def _check_shapes(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor]) -> None:
    if u.dim() != 3:
        raise ValueError(f'selective_scan: u must be (B, E, L), got {tuple(u.shape)}')
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim or A.is_complex():
        raise ValueError(f'selective_scan: A must be real (E, N) with E={dim}, got {tuple(A.shape)} {A.dtype}')
    dstate = A.shape[1]
    expected = {'delta': (delta, (batch, dim, length)), 'B': (B, (batch, dstate, length)),
                'C': (C, (batch, dstate, length))}
    if z is not None:
        expected['z'] = (z, (batch, dim, length))
    if D is not None:
        expected['D'] = (D, (dim,))
    if delta_bias is not None:
        expected['delta_bias'] = (delta_bias, (dim,))
    for key, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f'selective_scan: {key} must have shape {shape} (variable B/C only), '
                             f'got {tuple(tensor.shape)}')


def _discretization_delta(delta: torch.Tensor, delta_bias: Optional[torch.Tensor], delta_softplus: bool
                          ) -> torch.Tensor:
    """fp32 step sizes: ``softplus(delta + bias)`` with each part optional. Returns ``(B, E, L)``."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


# ----------------------------------------------------------------------------------------------------------------
# (a) sequential reference
# ----------------------------------------------------------------------------------------------------------------
def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                       delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                       return_last_state: bool = False) -> ScanOutput:
    """Sequential reference scan, written directly from the equations (mamba-ssm's algorithm).

    Args:
        u: inputs ``(B, E, L)``.
        delta: step sizes before bias/softplus ``(B, E, L)``.
        A: state matrix diagonal ``(E, N)``, real (negative for a stable scan).
        B: input projection ``(B, N, L)``.
        C: output projection ``(B, N, L)``.
        D: skip weights ``(E,)`` or None.
        z: gate input ``(B, E, L)`` or None; the output is multiplied by SiLU(z).
        delta_bias: ``(E,)`` added to delta before the softplus, or None.
        delta_softplus: apply softplus to delta.
        return_last_state: also return the final state ``(B, E, N)`` (fp32).

    Returns:
        out ``(B, E, L)`` in u's dtype, or ``(out, last_state)``.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    with torch.autocast(device_type=u.device.type, enabled=False):  # fp32 throughout, also inside autocast regions
        return _ref_body(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def _ref_body(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
              D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
              delta_softplus: bool, return_last_state: bool) -> ScanOutput:
    dtype_in = u.dtype
    u = u.float()
    delta = _discretization_delta(delta, delta_bias, delta_softplus)
    A, B, C = A.float(), B.float(), C.float()
    batch, dim, length = u.shape
    delta_A = torch.exp(torch.einsum('bel,en->beln', delta, A))  # A-bar_t, (B, E, L, N)
    delta_B_u = torch.einsum('bel,bnl,bel->beln', delta, B, u)  # B-bar_t u_t, (B, E, L, N)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = delta_A[:, :, t] * h + delta_B_u[:, :, t]
        ys.append(torch.einsum('ben,bn->be', h, C[:, :, t]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out


# ----------------------------------------------------------------------------------------------------------------
# (b) fast pure-PyTorch scan
# ----------------------------------------------------------------------------------------------------------------
def _default_chunk(device: torch.device, step_elems: int) -> int:
    """Time steps per chunk: about 2M state elements (8 MB fp32, cache-sized) per chunk on CPU, 64 on GPU."""
    if device.type == 'cuda':
        return 64
    return max(4, min(64, (1 << 21) // max(step_elems, 1)))


def _chunk_states(delta: torch.Tensor, delta_u: torch.Tensor, B: torch.Tensor, A_t: torch.Tensor,
                  decay: torch.Tensor, H: torch.Tensor) -> None:
    """Run the recurrence over one chunk of n steps, in place.

    Args:
        delta: ``(n, B, E)`` step sizes.
        delta_u: ``(n, B, E)`` delta * u.
        B: ``(n, B, N)``.
        A_t: ``(N, E)`` (A transposed).
        decay: output buffer ``(n, B, N, E)``, receives exp(delta A).
        H: ``(n + 1, B, N, E)``; ``H[0]`` holds the state before the chunk, ``H[1:]`` receives h_0..h_{n-1}.
    """
    torch.mul(delta[:, :, None, :], A_t, out=decay)
    decay.exp_()
    torch.mul(delta_u[:, :, None, :], B[:, :, :, None], out=H[1:])
    for t in range(delta.shape[0]):
        H[t + 1].addcmul_(decay[t], H[t])


def _to_steps(x: torch.Tensor) -> torch.Tensor:
    """``(B, X, L)`` -> contiguous fp32 ``(L, B, X)``."""
    return x.float().permute(2, 0, 1).contiguous()


class _FastScanFn(torch.autograd.Function):
    """Chunked selective scan with an analytic backward (adjoint recurrence run in reverse)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk):
        with torch.autocast(device_type=u.device.type, enabled=False):
            return _FastScanFn._forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                        chunk)

    @staticmethod
    def backward(ctx, dout, *rest):
        with torch.autocast(device_type=dout.device.type, enabled=False):
            return _FastScanFn._backward(ctx, dout, *rest)

    @staticmethod
    def _forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk):
        batch, dim, length = u.shape
        dstate = A.shape[1]
        chunk = max(1, min(int(chunk), length))
        dt = _discretization_delta(delta, delta_bias, delta_softplus)
        uf = u.float()
        dt_l, du_l = _to_steps(dt), _to_steps(dt * uf)
        B_l, C_l = _to_steps(B), _to_steps(C)
        A_t = A.float().t().contiguous()
        n_chunks = math.ceil(length / chunk)
        y_l = uf.new_empty(length, batch, dim)
        boundary = uf.new_empty(n_chunks, batch, dstate, dim)
        decay = uf.new_empty(chunk, batch, dstate, dim)
        H = uf.new_empty(chunk + 1, batch, dstate, dim)
        H[0].zero_()
        for k in range(n_chunks):
            s, e = k * chunk, min((k + 1) * chunk, length)
            n = e - s
            boundary[k].copy_(H[0])
            _chunk_states(dt_l[s:e], du_l[s:e], B_l[s:e], A_t, decay[:n], H[:n + 1])
            torch.bmm(C_l[s:e].view(n * batch, 1, dstate), H[1:n + 1].view(n * batch, dstate, dim),
                      out=y_l[s:e].view(n * batch, 1, dim))
            H[0].copy_(H[n])
        y = y_l.permute(1, 2, 0)  # (B, E, L), C.h only
        out = y if D is None else y + uf * D.float()[:, None]
        if z is not None:
            out = out * F.silu(z.float())
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, boundary, y)
        ctx.delta_softplus = delta_softplus
        ctx.chunk = chunk
        result = out.to(u.dtype)
        if return_last_state:
            return result, H[0].transpose(1, 2).contiguous()
        return result

    @staticmethod
    def _backward(ctx, dout, *rest):
        u, delta, A, B, C, D, z, delta_bias, boundary, y = ctx.saved_tensors
        dlast = rest[0] if rest else None
        chunk = ctx.chunk
        batch, dim, length = u.shape
        dstate = A.shape[1]
        uf = u.float()
        dt = _discretization_delta(delta, delta_bias, ctx.delta_softplus)
        dout = dout.float()

        # output gate and skip: out = (y + D u) * silu(z)
        pre_gate = y if D is None else y + uf * D.float()[:, None]
        dz = None
        if z is not None:
            zf = z.float()
            sig = torch.sigmoid(zf)
            dz = dout * pre_gate * sig * (1 + zf * (1 - sig))
            g = dout * zf * sig
        else:
            g = dout
        dD = (g * uf).sum(dim=(0, 2)) if D is not None else None
        du = g * D.float()[:, None] if D is not None else torch.zeros_like(uf)

        # adjoint recurrence, chunk by chunk from the end
        dt_l, du_l = _to_steps(dt), _to_steps(dt * uf)
        B_l, C_l, g_l = _to_steps(B), _to_steps(C), _to_steps(g)
        A_t = A.float().t().contiguous()
        d_du_l = uf.new_empty(length, batch, dim)  # d loss / d (delta u)
        d_dt_l = uf.new_empty(length, batch, dim)  # d loss / d delta through exp(delta A)
        dB_l = uf.new_empty(length, batch, dstate)
        dC_l = uf.new_empty(length, batch, dstate)
        dA_t = uf.new_zeros(dstate, dim)
        decay = uf.new_empty(chunk, batch, dstate, dim)
        H = uf.new_empty(chunk + 1, batch, dstate, dim)
        lam = uf.new_empty(chunk, batch, dstate, dim)
        carry = uf.new_zeros(batch, dstate, dim)  # adjoint flowing into the last step of the current chunk
        if dlast is not None:
            carry.copy_(dlast.float().transpose(1, 2))
        for k in reversed(range(boundary.shape[0])):
            s, e = k * chunk, min((k + 1) * chunk, length)
            n = e - s
            rows = n * batch
            H[0].copy_(boundary[k])
            _chunk_states(dt_l[s:e], du_l[s:e], B_l[s:e], A_t, decay[:n], H[:n + 1])
            states = H[1:n + 1].view(rows, dstate, dim)
            torch.bmm(states, g_l[s:e].view(rows, dim, 1), out=dC_l[s:e].view(rows, dstate, 1))
            torch.mul(C_l[s:e][:, :, :, None], g_l[s:e][:, :, None, :], out=lam[:n])
            lam[n - 1].add_(carry)
            for t in range(n - 2, -1, -1):
                lam[t].addcmul_(decay[t + 1], lam[t + 1])
            torch.mul(decay[0], lam[0], out=carry)
            # h_t gets B-bar_t u_t = (delta u)_t B_t: grads of delta*u and of B
            adjoint = lam[:n].view(rows, dstate, dim)
            torch.bmm(B_l[s:e].view(rows, 1, dstate), adjoint, out=d_du_l[s:e].view(rows, 1, dim))
            torch.bmm(adjoint, du_l[s:e].view(rows, dim, 1), out=dB_l[s:e].view(rows, dstate, 1))
            # h_t gets exp(delta_t A) h_{t-1}: grad of the exponent q = lam_t * h_{t-1} * exp(delta_t A)
            q = decay[:n].mul_(lam[:n]).mul_(H[:n])
            torch.sum(torch.mul(q, A_t, out=lam[:n]), dim=2, out=d_dt_l[s:e])
            dA_t.add_(torch.mul(q, dt_l[s:e][:, :, None, :], out=lam[:n]).sum(dim=(0, 1)))

        d_du = d_du_l.permute(1, 2, 0)
        ddt = d_dt_l.permute(1, 2, 0) + d_du * uf
        du = du + d_du * dt
        if ctx.delta_softplus:
            raw = delta.float() if delta_bias is None else delta.float() + delta_bias.float()[:, None]
            ddt = ddt * torch.sigmoid(raw)
        ddelta_bias = ddt.sum(dim=(0, 2)) if delta_bias is not None else None

        def cast(grad: Optional[torch.Tensor], like: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if grad is None or like is None else grad.to(like.dtype)

        return (cast(du, u), cast(ddt, delta), cast(dA_t.t(), A), cast(dB_l.permute(1, 2, 0), B),
                cast(dC_l.permute(1, 2, 0), C), cast(dD, D), cast(dz, z), cast(ddelta_bias, delta_bias),
                None, None, None)


def selective_scan_fast(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                        D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                        delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                        return_last_state: bool = False, chunk: Optional[int] = None) -> ScanOutput:
    """Fast pure-PyTorch selective scan; same arguments and results as :func:`selective_scan_ref`.

    Args:
        chunk: time steps per chunk (default: about 2M state elements per chunk on CPU, 64 on CUDA); changes speed
            and memory, not results.
        (others): as in :func:`selective_scan_ref`.

    Returns:
        out ``(B, E, L)`` in u's dtype, or ``(out, last_state (B, E, N) fp32)``.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    chunk = _default_chunk(u.device, u.shape[0] * A.numel()) if chunk is None else chunk
    return _FastScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk)


# ----------------------------------------------------------------------------------------------------------------
# (c) mamba-ssm CUDA kernel
# ----------------------------------------------------------------------------------------------------------------
def selective_scan_cuda(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                        D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                        delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                        return_last_state: bool = False) -> ScanOutput:
    """mamba-ssm's CUDA ``selective_scan_fn``; raises with the install command when it is missing."""
    fn = _load_cuda_kernel()
    if fn is None:
        raise RuntimeError(CUDA_INSTALL_HINT)
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    dtype = u.dtype
    return fn(u, delta.to(dtype), A.float(), B.to(dtype), C.to(dtype),
              D=None if D is None else D.float(), z=z, delta_bias=None if delta_bias is None else delta_bias.float(),
              delta_softplus=delta_softplus, return_last_state=return_last_state)


def _flip_time(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if x is None else x.flip(-1)


def _numba_entry(*args, **kwargs) -> ScanOutput:
    return _load_numba_kernel()(*args, **kwargs)


def _triton_entry(*args, **kwargs) -> ScanOutput:
    return _load_triton_kernel()(*args, **kwargs)


_IMPL_FUNCTIONS = {'ref': selective_scan_ref, 'fast': selective_scan_fast, 'numba': _numba_entry,
                   'triton': _triton_entry, 'cuda': selective_scan_cuda}
_NATIVE_REVERSE = ('numba', 'triton')


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                   delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                   impl: Optional[str] = None, return_last_state: bool = False, reverse: bool = False) -> ScanOutput:
    """Selective scan through the configured implementation (see the module docstring).

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state: as in :func:`selective_scan_ref`.
        impl: one of ``SCAN_IMPLS``; None uses :func:`get_scan_impl`.
        reverse: scan from token L-1 down to 0, i.e. ``flip(scan(flip(inputs)))`` along L; the last state is the one
            after token 0.

    Returns:
        out ``(B, E, L)`` in u's dtype, or ``(out, last_state)``.
    """
    name = resolve_scan_impl(u, impl)
    fn = _IMPL_FUNCTIONS[name]
    kwargs = dict(D=D, delta_bias=delta_bias, delta_softplus=delta_softplus, return_last_state=return_last_state)
    if not reverse:
        return fn(u, delta, A, B, C, z=z, **kwargs)
    if name in _NATIVE_REVERSE:
        return fn(u, delta, A, B, C, z=z, reverse=True, **kwargs)
    result = fn(*map(_flip_time, (u, delta)), A, *map(_flip_time, (B, C)), z=_flip_time(z), **kwargs)
    if return_last_state:
        return result[0].flip(-1), result[1]
    return result.flip(-1)
