"""Shared pytest setup."""

import importlib.util
import sys
from pathlib import Path

# Meta's reference package (a test dependency) imports torchvision; use the
# minimal stand-in only where the real one is not installed.
if importlib.util.find_spec("torchvision") is None:
    sys.path.insert(0, str(Path(__file__).parent / "_torchvision_standin"))


import time  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_qt_worker_outlives_its_test(request):
    """A worker thread left running by one test would hold one of the global Qt
    thread pool's slots (as many as cores: 2 on CI) and starve the next tests'
    workers; it could also emit into deleted widgets at exit. Wait for such
    workers, and fail the test that left them."""
    yield
    if "qtpy" not in sys.modules:
        return
    from qtpy.QtCore import QCoreApplication, QThreadPool

    pool = QThreadPool.globalInstance()
    if pool.activeThreadCount() == 0:
        return
    deadline = time.monotonic() + 60
    while pool.activeThreadCount() and time.monotonic() < deadline:
        if QCoreApplication.instance() is not None:
            QCoreApplication.processEvents()
        time.sleep(0.02)
    left = pool.activeThreadCount()
    if left:
        pytest.fail(f"{left} Qt worker thread(s) still running 60 s after the test ended")


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module of small models: per-op thread handoffs dominate
    there, and a busy second core makes them ten times slower. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def vit_tiny_random_checkpoint(tmp_path_factory):
    """Random weights of the vit_tiny blocks at a 256-px input (TINY_256, seeded), saved once per run."""
    import torch

    from tiny_geometry import TINY_256

    from src_core.model.build import build_sam_from_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vit_tiny_random.pth"
    torch.save(build_sam_from_config(TINY_256).state_dict(), path)
    return path
