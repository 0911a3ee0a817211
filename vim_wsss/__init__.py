"""vim_wsss: weakly supervised semantic segmentation from the implicit attention of Vision Mamba.

Importing the package registers the ViM / DeiT entrypoints with timm (``vim_wsss.models``); mmseg is only imported
where it is needed, through :func:`vim_wsss.compat.ensure_mmseg`.
"""
__version__ = '0.1.0'


def _register_models() -> None:
    try:
        from . import models  # noqa: F401  (registers the timm entrypoints)
    except ModuleNotFoundError as err:
        if err.name != f'{__name__}.models':  # a missing dependency inside models is a real error
            raise


_register_models()
