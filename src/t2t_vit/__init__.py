"""Tokens-to-Token ViT: models registered in timm, the authors' checkpoints, training and tools.

`import t2t_vit` registers the models in timm: at once if timm is already imported, else the moment timm is (an
import hook), so that the `t2t-vit` command answers `--help` without loading torch. The public names below load
on first use. The package logs through `logging` under "t2t_vit" and adds no handler: where an application has
configured none, Python prints its warnings (a checkpoint's head left out, say) on stderr.
"""

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__all__ = ["InputError", "T2TViT", "create_model", "list_models", "load_checkpoint", "load_model"]
__version__ = "0.1.0"

_PUBLIC = {
    "InputError": "errors",
    "T2TViT": "models",
    "create_model": "factory",
    "list_models": "factory",
    "load_model": "factory",
    "load_checkpoint": "models.checkpoint_filter",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _RegisterWithTimm(importlib.abc.MetaPathFinder):
    """Imports `t2t_vit.pretrained` (which imports `t2t_vit.models`, registering them) right after timm has
    finished importing."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            importlib.import_module(".pretrained", __name__)  # the models, and where their weights come from

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


if "timm" in sys.modules:
    from . import pretrained  # noqa: F401  (imports the models, and tells them where their weights come from)
else:
    sys.meta_path.insert(0, _RegisterWithTimm())
