"""The ``napari-sam`` command line: one module per command on :mod:`.common`, wired by :mod:`.main`.

Commands: ``segment`` (:mod:`.segment`, text prompts :mod:`.text`), ``models`` and
``download`` (:mod:`.models`), ``label`` (:mod:`.label`), ``track`` (:mod:`.track`)
and ``train`` (:mod:`.train`). Command modules import :mod:`.common`, never
:mod:`.main`; the engine never imports this package.
"""

from .main import main

__all__ = ["main"]
