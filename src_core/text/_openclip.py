"""Importing ``open_clip`` where torchvision is missing.

open_clip (the optional ``napari-sam[text]`` extra) imports torchvision when it is
imported, for its image transforms (``open_clip.transform``) and one layer
(``torchvision.ops.misc.FrozenBatchNorm2d``, used to freeze ResNet towers for
training). napari-sam never uses either: it builds the model and preprocesses
images itself (:mod:`src_core.text.crops`). torchvision, however, cannot be
installed beside every torch build (its wheels pin one torch version), and
``pip install open_clip_torch`` would then replace the installed torch.

So :func:`import_open_clip` first imports open_clip normally. Only when that
fails because torchvision (or a part of it open_clip names) is missing, it
imports it again with *placeholder* modules for exactly the torchvision modules
open_clip imports, put in ``sys.modules`` for the duration of that one import
and removed (with whatever was there before put back) right after. The
placeholders only let open_clip's module bodies run: any use of one (calling
one of its classes) raises an ImportError that says torchvision is needed. A
complete torchvision, when installed, is therefore always the one open_clip
uses, and nothing else in the process ever sees the placeholders (except
another thread importing torchvision during those few hundred milliseconds).
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from typing import Any

__all__ = ["TextExtraMissing", "import_open_clip", "INSTALL_HINT"]

#: How to install the extra (torch is never upgraded by it).
INSTALL_HINT = (
    'pip install "napari-sam[text]" && pip install --no-deps open_clip_torch==3.3.0 '
    "(--no-deps: open_clip's own requirements would replace torch with another build "
    "and add torchvision, which napari-sam does not need)"
)

# the torchvision modules open_clip 3.x imports at import time
_SHIMMED = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "torchvision.ops",
    "torchvision.ops.misc",
)
_lock = threading.Lock()


class TextExtraMissing(ImportError):
    """The optional text extra (open_clip and its requirements) is not installed."""


class _PlaceholderMeta(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"  # e.g. InterpolationMode.BICUBIC as a default argument


class _Placeholder(metaclass=_PlaceholderMeta):
    """Stands for a torchvision class; subclassing works, instantiating raises."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ImportError(
            f"{type(self).__name__} needs torchvision, which is not installed; napari-sam does "
            "not use open_clip's torchvision transforms"
        )


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = _PlaceholderMeta(name, (_Placeholder,), {"__module__": self.__name__})
        setattr(self, name, value)
        return value


def _torchvision_missing(exc: ImportError) -> bool:
    name = getattr(exc, "name", None) or ""
    return name == "torchvision" or name.startswith("torchvision.") or "torchvision" in str(exc)


def _purge() -> None:
    for name in [m for m in sys.modules if m == "open_clip" or m.startswith("open_clip.")]:
        del sys.modules[name]


def _missing(exc: BaseException) -> TextExtraMissing:
    what = getattr(exc, "name", None) or str(exc)
    err = TextExtraMissing(
        f"text prompts need the optional text extra (open_clip; missing: {what}). Install it with: "
        + INSTALL_HINT
    )
    err.__cause__ = exc
    return err


def import_open_clip() -> types.ModuleType:
    """The ``open_clip`` module, imported with torchvision placeholders if needed.

    Raises
    ------
    TextExtraMissing
        open_clip, ftfy or regex is not installed.
    """
    module = sys.modules.get("open_clip")
    if module is not None and hasattr(module, "get_tokenizer"):
        return module
    with _lock:
        try:
            return importlib.import_module("open_clip")
        except ImportError as exc:
            if not _torchvision_missing(exc):
                raise _missing(exc) from exc
        _purge()
        saved = {name: sys.modules.get(name) for name in _SHIMMED}
        try:
            for name in _SHIMMED:
                sys.modules[name] = _PlaceholderModule(name)
            for name in _SHIMMED:  # parent.child attributes, as a real import sets them
                parent, _, child = name.rpartition(".")
                if parent:
                    setattr(sys.modules[parent], child, sys.modules[name])
            try:
                return importlib.import_module("open_clip")
            except ImportError as exc:
                _purge()
                raise _missing(exc) from exc
        finally:
            for name, previous in saved.items():
                if previous is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = previous
