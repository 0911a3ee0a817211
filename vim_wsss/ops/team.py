"""Launch the compiled CPU kernels on torch's own OpenMP team, or on numba's thread pool where that is not possible.

Why: torch runs its ops on an OpenMP team, whose idle workers spin for milliseconds after each op (libgomp's default
wait policy). A numba ``parallel=True`` kernel runs on a second pool beside it, so at 2 threads on 2 cores the kernel
shared the cores with a spinning torch worker, and each launch woke sleeping pool threads (0.06-0.35 ms). Run on
torch's team instead (``GOMP_parallel`` of the OpenMP runtime torch loaded, called through ctypes, which releases the
GIL), the workers that were spinning pick the kernel up at once: the ViM-S scan right after a matrix multiply took
1.71 ms median instead of 2.52 ms at 2 threads, and a call at 1 thread is a plain function call.

How: a kernel has a per-job body (one (batch, channel block) of the scan, say) and two launchers compiled from it,
the ``numba.prange`` loop and a *team function*, a numba ``cfunc`` ``void(void *table)`` that every team thread runs:
it rebuilds the arrays from the table (pointer and shape of each array, then the flags; :func:`pack`) and claims jobs
with an atomic counter at ``table[0]`` until ``table[1]`` jobs are taken. Each job writes its own outputs, so the
results are identical to the prange launch whatever thread takes which job. Team functions are compiled on first use
and cached on disk like the kernels.

The team is used on Linux when a loaded OpenMP runtime exports ``GOMP_parallel`` (libgomp of the pip wheels; Intel's
and LLVM's runtimes export it too), preferring the one in torch's ``lib`` directory. ``VIM_WSSS_OMP_TEAM=0`` turns it
off (numba's pool then runs every kernel, serialised by :data:`LAUNCH_LOCK`: numba's 'workqueue' layer, selected here
unless ``NUMBA_THREADING_LAYER`` is set, allows one parallel launch at a time).
"""
from __future__ import annotations

import ctypes
import os
import threading
from typing import Callable, Dict, Optional

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.extending import intrinsic

__all__ = ['LAUNCH_LOCK', 'set_threads', 'team_available', 'launch', 'pack']

LAUNCH_LOCK = threading.Lock()  # numba's workqueue layer allows one parallel launch at a time
if 'NUMBA_THREADING_LAYER' not in os.environ:
    numba.config.THREADING_LAYER = 'workqueue'
_OPENMP_NAMES = ('libgomp', 'libiomp5', 'libomp')


def set_threads() -> int:
    """Give numba's pool ``min(torch.get_num_threads(), NUMBA_NUM_THREADS)`` threads (call under
    :data:`LAUNCH_LOCK`); returns that count."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return threads


def _gomp_parallel() -> Optional[Callable]:
    """``GOMP_parallel`` of the OpenMP runtime torch loaded (Linux), or None."""
    if os.environ.get('VIM_WSSS_OMP_TEAM', '1') == '0':
        return None
    try:
        with open('/proc/self/maps') as f:
            paths = {line.split()[-1] for line in f if any(n in line.rsplit('/', 1)[-1] for n in _OPENMP_NAMES)}
    except OSError:
        return None
    torch_lib = os.path.join(os.path.dirname(torch.__file__), 'lib')
    for path in sorted(paths, key=lambda p: (not p.startswith(torch_lib), p)):
        try:
            fn = ctypes.CDLL(path).GOMP_parallel
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        fn.restype = None
        return fn
    return None


_GOMP_PARALLEL = _gomp_parallel()
_TEAM_FUNCTIONS: Dict[Callable, object] = {}
_TEAM_LOCK = threading.Lock()


def team_available() -> bool:
    """Whether kernels run on torch's OpenMP team (else on numba's pool)."""
    return _GOMP_PARALLEL is not None


def pack(njobs: int, args: tuple) -> np.ndarray:
    """The int64 table a team function reads: ``[claimed jobs (0), njobs]``, then per argument in order: an array's
    address and shape (C-contiguous fp32), a bool or int's value."""
    table = [0, njobs]
    for arg in args:
        if isinstance(arg, np.ndarray):
            if arg.dtype != np.float32 or not arg.flags.c_contiguous:
                raise TypeError(f'team kernels take C-contiguous float32 arrays, got {arg.dtype} {arg.flags}')
            table += [arg.ctypes.data, *arg.shape]
        else:
            table.append(int(arg))
    return np.array(table, np.int64)


#: Compiler options a team function takes over from its kernel's dispatcher.
_SHARED_OPTIONS = ('fastmath', 'error_model')


def launch(kernel: Callable, team: Callable, njobs: int, *args) -> None:
    """Run ``njobs`` jobs of a kernel: ``team`` (the team function's Python source, compiled here on first use with
    the fastmath and error model of ``kernel``) on torch's OpenMP team with ``torch.get_num_threads()`` threads, else
    ``kernel(*args)`` (its prange launcher) on numba's pool."""
    if _GOMP_PARALLEL is None:
        with LAUNCH_LOCK:
            set_threads()
            kernel(*args)
        return
    fn = _TEAM_FUNCTIONS.get(team)
    if fn is None:
        with _TEAM_LOCK:
            fn = _TEAM_FUNCTIONS.get(team)
            if fn is None:
                options = {k: kernel.targetoptions[k] for k in _SHARED_OPTIONS if k in kernel.targetoptions}
                fn = _TEAM_FUNCTIONS[team] = cfunc(types.void(types.voidptr), cache=True, **options)(team)
    table = pack(njobs, args)  # referenced until the call returns, as are the arrays in args
    _GOMP_PARALLEL(fn.address, table.ctypes.data, max(1, min(torch.get_num_threads(), njobs)), 0)


# ----------------------------------------------------------------------------------------------------------------
# helpers for team functions (nopython): the table, job claims, arrays from their address and shape
# ----------------------------------------------------------------------------------------------------------------
@intrinsic
def table_of(typingctx, data):
    """The ``void *`` argument of a team function as an int64 pointer."""
    sig = types.CPointer(types.int64)(types.voidptr)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64).as_pointer())

    return sig, codegen


@intrinsic
def claim(typingctx, table):
    """Atomically take the next job index (``table[0]``, then incremented)."""
    sig = types.int64(types.CPointer(types.int64))

    def codegen(context, builder, signature, args):
        return builder.atomic_rmw('add', args[0], ir.Constant(ir.IntType(64), 1), 'monotonic')

    return sig, codegen


@intrinsic
def _f32_pointer(typingctx, address):
    sig = types.CPointer(types.float32)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.FloatType().as_pointer())

    return sig, codegen


@njit(inline='always')
def array1(table, i):
    """The 1-d array packed at ``table[i]`` and the index after it."""
    return carray(_f32_pointer(table[i]), (table[i + 1],)), i + 2


@njit(inline='always')
def array2(table, i):
    return carray(_f32_pointer(table[i]), (table[i + 1], table[i + 2])), i + 3


@njit(inline='always')
def array3(table, i):
    return carray(_f32_pointer(table[i]), (table[i + 1], table[i + 2], table[i + 3])), i + 4


@njit(inline='always')
def array4(table, i):
    return carray(_f32_pointer(table[i]), (table[i + 1], table[i + 2], table[i + 3], table[i + 4])), i + 5


@njit(inline='always')
def array5(table, i):
    shape = (table[i + 1], table[i + 2], table[i + 3], table[i + 4], table[i + 5])
    return carray(_f32_pointer(table[i]), shape), i + 6
