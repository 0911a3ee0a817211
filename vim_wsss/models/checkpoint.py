"""Checkpoints: the one module every reader goes through (training, maps, explain, test-seg, resume).

::

    read_checkpoint(path, trust=None)        -> object      safe unpickling: no code runs unless the user opts in
    backbone_state_dict(obj, source)         -> state dict  unwrap model / state_dict / module. / backbone. / model.
    load_state(model, state, source, ...)    -> model       family filter (pos_embed, head) + strict check + load
    load_weights(model, path, ...)           -> model       read_checkpoint -> backbone_state_dict -> load_state

**Safe by default.** Files are unpickled with torch's restricted (``weights_only``) unpickler plus an allow-list of
exactly the types that official Vim/DeiT files (``args`` as ``argparse.Namespace``, numpy scalars) and this project's
mmengine checkpoints (message-hub ``HistoryBuffer`` with its statistics methods, numpy arrays, ``ConfigDict``) carry. Anything else is refused
with a message naming the refused globals and the opt-in: ``--trust-checkpoint`` on every subcommand that reads a
checkpoint, or the environment variable ``VIM_WSSS_TRUST_CHECKPOINT=1`` (the flag sets it for the process, so the
mmengine Runner's own loads see it too). Trusting a file means unpickling it fully, which can run code.

**Family dispatch** lives in :data:`FAMILIES` (model class -> ``checkpoint_filter_fn``, kept next to each model):
the filter resamples ``pos_embed`` (ViM: around the middle class token) and drops a head that does not fit.
"""
from __future__ import annotations

import argparse
import inspect
import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

__all__ = ['CheckpointError', 'TRUST_ENV', 'trust_from_env', 'safe_globals', 'read_checkpoint',
           'backbone_state_dict', 'check_state_dict', 'load_state', 'load_weights', 'model_family',
           'drop_mismatched_head', 'check_training_args']

PathLike = Union[str, 'os.PathLike[str]']
TRUST_ENV = 'VIM_WSSS_TRUST_CHECKPOINT'
OPT_IN = f'pass --trust-checkpoint (or set {TRUST_ENV}=1)'
WRAPPER_KEYS = ('state_dict', 'model')  # mmengine checkpoints / official Vim and DeiT files
PREFIXES = ('module.', 'backbone.', 'model.')  # DDP, MultiLabelClassifier / segmentor, TokenBackbone


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely or does not fit the model; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------------
def trust_from_env() -> bool:
    """True when ``VIM_WSSS_TRUST_CHECKPOINT`` is set to 1 / true / yes."""
    return os.environ.get(TRUST_ENV, '').strip().lower() in ('1', 'true', 'yes')


def _numpy_globals() -> List[Any]:
    """numpy objects that pickled arrays, dtypes and scalars reference (numpy 2 names plus numpy 1 aliases)."""
    from numpy._core import multiarray

    found: List[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar,
                        (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
                        (multiarray.scalar, 'numpy.core.multiarray.scalar')]
    scalars = {t for t in np.sctypeDict.values() if issubclass(t, (np.number, np.bool_))}  # no object/void
    found += sorted(scalars, key=str)
    found += sorted({type(np.dtype(t)) for t in scalars}, key=str)
    return found


def _mmengine_classes() -> List[type]:
    try:
        from mmengine.config import ConfigDict
        from mmengine.logging import HistoryBuffer
    except ImportError:
        return []
    return [HistoryBuffer, ConfigDict]


def method_of_allowed_class(owner: Any, name: str) -> Any:
    """``getattr`` as the restricted unpickler may call it: only a public function of an allow-listed class.

    mmengine's ``HistoryBuffer`` keeps its statistics methods in the instance, which pickle writes as
    ``getattr(HistoryBuffer, 'mean')``; a general ``getattr`` would let a file reach anything.
    """
    if owner in _mmengine_classes() and not name.startswith('_') and \
            inspect.isfunction(inspect.getattr_static(owner, name, None)):
        return getattr(owner, name)
    raise pickle.UnpicklingError(f'getattr({owner!r}, {name!r}) is not allowed by the safe loader')


def safe_globals() -> List[Any]:
    """Everything the restricted unpickler may rebuild besides tensors and containers."""
    allowed: List[Any] = [argparse.Namespace] + _numpy_globals() + _mmengine_classes()
    allowed += [(method_of_allowed_class, 'builtins.getattr'), (method_of_allowed_class, '__builtin__.getattr')]
    return allowed


def _allowed_names() -> set:
    names = set()
    for item in safe_globals():
        if isinstance(item, tuple):
            names.add(item[1])
        else:
            names.add(f'{item.__module__}.{item.__qualname__}')
    return names


def _refused_globals(path: Path, err: BaseException) -> List[str]:
    """Globals in ``path`` that the restricted unpickler refuses (read without unpickling)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # legacy (non-zip) files: fall back to torch's message
        found = re.findall(r'GLOBAL (\S+?)(?: was not|\s|$)', str(err))
    allowed = _allowed_names()
    return [name for name in found if name not in allowed]


def read_checkpoint(path: PathLike, trust: Optional[bool] = None, map_location: Any = 'cpu') -> Any:
    """Load a ``.pth`` file without running code from it.

    Args:
        path: checkpoint file.
        trust: unpickle fully when the safe loader refuses a type (can run code). None: ``VIM_WSSS_TRUST_CHECKPOINT``.
        map_location: as for ``torch.load``.

    Raises:
        FileNotFoundError: the file is missing.
        CheckpointError: the file is empty, truncated or not a checkpoint, or holds types that need the opt-in.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} not found; check the path (official weights go in checkpoints/, '
                                f'see checkpoints/README.md).')
    if path.stat().st_size == 0:
        raise CheckpointError(f'checkpoint {path} is empty (0 bytes); copy or download it again.')
    trust = trust_from_env() if trust is None else trust
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_globals(path, err)
        if not refused:
            raise _corrupt(path, err) from err
        if trust:
            return torch.load(path, map_location=map_location, weights_only=False)
        raise CheckpointError(f'checkpoint {path} holds {", ".join(sorted(set(refused))[:6])}, which the safe loader '
                              f'refuses (unpickling it could run code); if you made or trust this file, '
                              f'{OPT_IN}.') from err
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError, ... for damaged files
        raise _corrupt(path, err) from err


def _corrupt(path: Path, err: BaseException) -> CheckpointError:
    text = str(err).strip()
    first = f'{type(err).__name__}: {text.splitlines()[0]}' if text else type(err).__name__
    return CheckpointError(f'cannot read checkpoint {path} ({first[:200]}); if the file is truncated or not a torch '
                           f'checkpoint, copy or download it again.')


# ----------------------------------------------------------------------------------------------------------------
# unwrapping and checking
# ----------------------------------------------------------------------------------------------------------------
def _strip(state: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def backbone_state_dict(checkpoint: Any, source: PathLike) -> Dict[str, torch.Tensor]:
    """The backbone's tensors from an official file, a plain state dict, or an mmengine classifier / segmentor file.

    Unwraps ``state_dict`` (mmengine) or ``model`` (official Vim / DeiT), a DDP ``module.`` prefix, ``backbone.``
    (stage-1 classifier and segmentor checkpoints: other sub-modules such as ``decode_head.`` are left out) and
    ``model.`` (the timm model inside :class:`vim_wsss.seg.TokenBackbone`).

    Raises:
        CheckpointError: not a dict of tensors.
    """
    state = checkpoint
    for key in WRAPPER_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f'checkpoint {source} holds a {type(state).__name__}, not a state dict of tensors; '
                              f'pass an official .pth, a state dict or a train-cls / train-seg checkpoint.')
    state = dict(state)
    for prefix in PREFIXES:
        if prefix == 'backbone.' and any(k.startswith(prefix) for k in state):
            state = _strip(state, prefix)
        elif all(k.startswith(prefix) for k in state):
            state = _strip(state, prefix)
    others = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if others:
        raise CheckpointError(f'checkpoint {source}: entries {others[:5]} are not tensors; pass a state dict of '
                              f'tensors (or an official / train-cls checkpoint).')
    return state


def check_training_args(checkpoint: Any, source: PathLike) -> None:
    """Reject Vim checkpoints whose training args say the two scan directions were not averaged."""
    args = checkpoint.get('args') if isinstance(checkpoint, Mapping) else None
    values = vars(args) if hasattr(args, '__dict__') else (args if isinstance(args, Mapping) else {})
    for key in ('if_divide_out', 'if_devide_out'):
        if key in values and not values[key]:
            raise CheckpointError(f'{source}: trained with {key}=False, but the released Vim models (and this port) '
                                  'average the two scan directions; this checkpoint is not supported.')


def drop_mismatched_head(state: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Drop ``head.*`` when the model's head differs (other num_classes, or none): it keeps its fresh init."""
    own = model.state_dict()
    head_keys = [k for k in state if k.startswith('head.')]
    if any(k not in own or own[k].shape != state[k].shape for k in head_keys):
        state = {k: v for k, v in state.items() if not k.startswith('head.')}
    return state


def _list(title: str, items: List[str]) -> str:
    more = ' ...' if len(items) > 12 else ''
    return f'{title} ({len(items)}): ' + ', '.join(items[:12]) + more


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: PathLike,
                     new_head: bool = False) -> None:
    """Raise one message listing missing / unexpected / mis-shaped keys when ``state`` does not fit ``model``.

    Args:
        new_head: the model's ``head.*`` may be missing from ``state`` (fine-tuning: the head is freshly initialised).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not (new_head and k.startswith('head.'))]
    unexpected = [k for k in state if k not in own]
    mis_shaped = [f'{k} {tuple(v.shape)} vs {tuple(own[k].shape)}'
                  for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    problems = [_list(t, items) for t, items in (('missing', missing), ('unexpected', unexpected),
                                                   ('mis-shaped, checkpoint vs model', mis_shaped)) if items]
    if problems:
        raise CheckpointError(f'checkpoint {source} does not fit {type(model).__name__}: ' + '; '.join(problems)
                              + '; fix: use the model / config the checkpoint was trained with '
                              '(see checkpoints/README.md).')


# ----------------------------------------------------------------------------------------------------------------
# family dispatch and loading
# ----------------------------------------------------------------------------------------------------------------
def _families() -> Dict[str, Tuple[type, Callable[[Dict[str, torch.Tensor], nn.Module], Dict[str, torch.Tensor]]]]:
    """FAMILIES: name -> (model class, checkpoint_filter_fn). The one dispatch table."""
    from .deit import DeiT
    from .deit import checkpoint_filter_fn as deit_filter
    from .vim import VisionMamba
    from .vim import checkpoint_filter_fn as vim_filter

    return {'vim': (VisionMamba, vim_filter), 'deit': (DeiT, deit_filter)}


def model_family(model: nn.Module) -> str:
    """'vim' or 'deit' for a backbone built here."""
    for name, (cls, _) in _families().items():
        if isinstance(model, cls):
            return name
    raise TypeError(f'{type(model).__name__} is not a vim_wsss backbone (VisionMamba or DeiT).')


def _head_rows(state: Mapping[str, torch.Tensor]) -> Optional[int]:
    head = state.get('head.weight')
    return int(head.shape[0]) if isinstance(head, torch.Tensor) else None


def load_state(model: nn.Module, state: Dict[str, torch.Tensor], source: PathLike,
               new_head: bool = False) -> nn.Module:
    """Load an unwrapped backbone state dict into a ViM / DeiT model, strictly.

    Args:
        model: target backbone (any img_size: ``pos_embed`` is resampled by the family's filter).
        state: from :func:`backbone_state_dict`.
        source: file name for messages.
        new_head: fine-tuning: a head that is absent or of another size is left freshly initialised. False
            (evaluation): the checkpoint's head must fit the model's.

    The model is marked ``is_init``: mmengine's ``BaseModule.init_weights()`` (what a Runner calls before the first
    iteration) skips children so marked, instead of re-running the backbone's own init over the loaded weights.

    Raises:
        CheckpointError: listing missing / unexpected / mis-shaped keys, or the head mismatch.
    """
    family = model_family(model)
    own_rows, file_rows = _head_rows(model.state_dict()), _head_rows(state)
    if not new_head and own_rows is not None and file_rows is not None and own_rows != file_rows:
        raise CheckpointError(f'checkpoint {source} has a {file_rows}-class head but the model expects {own_rows}; '
                              f'use the config (num_classes) it was trained with.')
    state = _families()[family][1](state, model)
    check_state_dict(model, state, source, new_head=new_head)
    model.load_state_dict(state, strict=False)
    model.is_init = True  # mmengine's BaseModule.init_weights() skips children marked so: the Runner keeps these
    return model


def load_weights(model: nn.Module, path: PathLike, new_head: bool = False, trust: Optional[bool] = None) -> nn.Module:
    """Read ``path`` safely and load its backbone weights into ``model`` (see :func:`load_state`)."""
    checkpoint = read_checkpoint(path, trust=trust)
    check_training_args(checkpoint, path)
    return load_state(model, backbone_state_dict(checkpoint, path), path, new_head=new_head)
