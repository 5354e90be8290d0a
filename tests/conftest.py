"""Shared pytest setup."""

import importlib.util
import sys
from pathlib import Path

# Meta's reference package (a test dependency) imports torchvision; use the
# minimal stand-in only where the real one is not installed.
if importlib.util.find_spec("torchvision") is None:
    sys.path.insert(0, str(Path(__file__).parent / "_torchvision_standin"))
