"""Packaging: cheap import, the napari manifest (editable and wheel), sample data."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from src_core import synthetic

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_KEYS = {"cell", "astronaut", "nuclei_2d", "nuclei_3d", "multichannel_16bit"}
ENGINE_NAMES = (
    "build_sam",
    "SamPredictor",
    "sam_model_registry",
    "CHECKPOINTS",
    "download_checkpoint",
    "load_state_dict",
)


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("cwd", ROOT)
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, (
        f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc


def _require_installed() -> md.Distribution:
    try:
        return md.distribution("napari-sam")
    except md.PackageNotFoundError:
        pytest.fail("napari-sam is not installed here: run ./scripts/setup-env.sh")


# --- the package -----------------------------------------------------------


def test_import_is_cheap():
    code = (
        "import sys, napari_sam\n"
        "heavy = {'torch', 'napari', 'qtpy', 'PyQt6', 'PySide6', 'magicgui', 'vispy'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
        "print(napari_sam.__version__)\n"
    )
    # From outside the repo, so the installed package is what gets imported.
    out = _run([sys.executable, "-c", code], cwd=Path(sys.prefix)).stdout.split("\n")
    assert out[0] == "[]", f"importing napari_sam imported {out[0]}"
    assert out[1] == md.version("napari-sam")


def test_facade_reexports_engine():
    import napari_sam
    import src_core

    assert set(ENGINE_NAMES) <= set(napari_sam.__all__)
    assert set(ENGINE_NAMES) <= set(dir(napari_sam))
    for name in ENGINE_NAMES:
        assert getattr(napari_sam, name) is getattr(src_core, name), name
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        napari_sam.not_a_name  # noqa: B018


def test_manifest_link_points_at_top_level_file():
    link = ROOT / "napari_sam" / "napari.yaml"
    assert link.is_symlink(), (
        "napari_sam/napari.yaml must be a symlink to ../napari.yaml (a checkout "
        "without symlink support, e.g. git core.symlinks=false, breaks it)"
    )
    assert link.resolve() == (ROOT / "napari.yaml").resolve()


def test_editable_install_manifest_is_valid():
    _require_installed()
    proc = _run([sys.executable, "-m", "npe2", "validate", "napari-sam", "--imports"])
    assert "valid" in proc.stdout

    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-sam")
    assert pm.name == "napari-sam"
    assert pm.display_name == "Segment Anything - napari-sam"
    assert {s.key for s in pm.contributions.sample_data} == SAMPLE_KEYS


@pytest.mark.slow
def test_wheel_and_sdist_carry_the_manifest(tmp_path):
    """Build from a copy of the tree, install the wheel into a fresh venv, validate."""
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        symlinks=True,  # keep napari_sam/napari.yaml a link, as in a checkout
        ignore=shutil.ignore_patterns(
            ".venv*",
            ".git",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".pytest_cache",
        ),
    )
    # Wheel straight from the tree (what `pip install .` does) and wheel from
    # the sdist (what an install from an sdist does).
    build = [sys.executable, "-m", "build", "--no-isolation"]
    _run([*build, "--wheel", "--outdir", str(tmp_path / "direct"), str(src)])
    _run([*build, "--outdir", str(tmp_path / "via_sdist"), str(src)])
    (sdist,) = (tmp_path / "via_sdist").glob("*.tar.gz")
    wheels = [
        *(tmp_path / "direct").glob("*.whl"),
        *(tmp_path / "via_sdist").glob("*.whl"),
    ]
    assert len(wheels) == 2

    manifest = (ROOT / "napari.yaml").read_bytes()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            assert zf.read("napari_sam/napari.yaml") == manifest, wheel.name
            (entry_points,) = [
                n for n in names if n.endswith(".dist-info/entry_points.txt")
            ]
            assert (
                "napari-sam = napari_sam:napari.yaml" in zf.read(entry_points).decode()
            )
        assert not [
            n for n in names if n.split("/")[0] in ("tests", "bench", "scripts")
        ]
        for package in _source_packages():
            assert f"{package}/__init__.py" in names, (
                f"{package} missing from {wheel.name}"
            )

    venv = tmp_path / "fresh"
    _run(
        [
            sys.executable,
            "-m",
            "venv",
            "--without-pip",
            "--system-site-packages",
            str(venv),
        ]
    )
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheels[0]),
        ]
    )
    fresh_site = Path(
        _run(
            [
                str(python),
                "-I",
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            cwd=tmp_path,
        ).stdout.strip()
    )
    # Dependencies come from this (outer) environment. Add it as a site dir,
    # .pth files included, so its editable napari-sam is visible too: the wheel
    # must still win.
    outer_site = sysconfig.get_paths()["purelib"]
    (fresh_site / "_outer_env.pth").write_text(
        f"import site; site.addsitedir({outer_site!r})\n"
    )

    probe = (
        "import importlib.metadata as md, importlib.util, json\n"
        "import napari_sam, src_core\n"
        "from npe2 import PluginManifest\n"
        "pm = PluginManifest.from_distribution('napari-sam')\n"
        "print(json.dumps({\n"
        "  'napari_sam': napari_sam.__file__, 'src_core': src_core.__file__,\n"
        "  'locations': list(importlib.util.find_spec('napari_sam').submodule_search_locations),\n"
        "  'dist': str(md.distribution('napari-sam')._path),\n"
        "  'n_dists': sum(d.metadata['Name'] == 'napari-sam' for d in md.distributions()),\n"
        "  'samples': sorted(s.key for s in pm.contributions.sample_data),\n"
        "  'version': napari_sam.__version__}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    found = json.loads(
        _run([str(python), "-I", "-c", probe], cwd=tmp_path, env=env).stdout
    )

    def inside(path: str) -> bool:
        return Path(path).resolve().is_relative_to(fresh_site.resolve())

    assert inside(found["napari_sam"]) and inside(found["src_core"]), found
    assert all(inside(loc) for loc in found["locations"]), found
    assert inside(found["dist"]), found
    assert found["samples"] == sorted(SAMPLE_KEYS)
    assert found["version"] == md.version("napari-sam")
    if _outer_is_editable():
        assert found["n_dists"] == 2, "the outer editable install was not visible"

    _run(
        [str(python), "-I", "-m", "npe2", "validate", "napari-sam", "--imports"],
        cwd=tmp_path,
        env=env,
    )
    with tarfile.open(sdist) as tf:
        member = tf.getmember(f"{sdist.name[: -len('.tar.gz')]}/napari_sam/napari.yaml")
        assert member.isfile()  # the link was followed, not stored


def _source_packages() -> list[str]:
    """Folders of napari_sam and src_core holding Python files, as dotted paths."""
    packages = []
    for top in ("napari_sam", "src_core"):
        for init in (ROOT / top).rglob("*.py"):
            rel = init.parent.relative_to(ROOT)
            if "__pycache__" in rel.parts:
                continue
            assert (init.parent / "__init__.py").exists(), (
                f"{rel} has Python files but no __init__.py: it would be left "
                "out of the wheel"
            )
            packages.append(rel.as_posix())
    return sorted(set(packages))


def _outer_is_editable() -> bool:
    text = md.distribution("napari-sam").read_text("direct_url.json") or "{}"
    return json.loads(text).get("dir_info", {}).get("editable", False)


# --- synthetic images ------------------------------------------------------

GENERATORS = {
    "nuclei_2d": (synthetic.make_nuclei_2d, (512, 512), 40),
    "nuclei_3d": (synthetic.make_nuclei_3d, (32, 256, 256), 25),
    "multichannel": (synthetic.make_cells_multichannel, (3, 384, 384), 18),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_synthetic_defaults(name):
    make, shape, n = GENERATORS[name]
    start = time.perf_counter()
    image, labels = make()
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"{name} took {elapsed:.2f} s"
    assert image.shape == shape and image.dtype == np.uint16
    assert labels.shape == (shape[1:] if name == "multichannel" else shape)
    assert labels.dtype == np.int32
    # Ids are exactly 1..n, each object one connected region.
    np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))
    for i in range(1, n + 1):
        assert ndi.label(labels == i)[1] == 1, f"object {i} is split"
    # Objects are brighter than the background.
    first = image[0] if name == "multichannel" else image
    assert first[labels > 0].mean() > 2 * first[labels == 0].mean()


@pytest.mark.parametrize("name", GENERATORS)
def test_synthetic_is_deterministic(name):
    make = GENERATORS[name][0]
    image_a, labels_a = make(seed=3)
    image_b, labels_b = make(seed=3)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    image_c, _ = make(seed=4)
    assert not np.array_equal(image_a, image_c)


def test_synthetic_nuclei_touch():
    _, labels = synthetic.make_nuclei_2d()
    # Pairs of different nuclei side by side (4-neighbourhood).
    pairs = set()
    for a, b in ((labels[:-1], labels[1:]), (labels[:, :-1], labels[:, 1:])):
        touching = (a != b) & (a > 0) & (b > 0)
        pairs |= {tuple(sorted(p)) for p in zip(a[touching], b[touching])}
    assert len(pairs) >= 3


def test_synthetic_options():
    image, labels = synthetic.make_nuclei_2d(
        shape=(128, 160), n=5, seed=1, dtype=np.float32
    )
    assert image.shape == labels.shape == (128, 160) and image.dtype == np.float32
    assert labels.max() == 5
    image8, _ = synthetic.make_nuclei_2d(shape=(64, 64), n=2, dtype=np.uint8)
    assert image8.dtype == np.uint8 and image8.max() < 255  # not saturated
    with pytest.raises(ValueError, match="shape"):
        synthetic.make_nuclei_2d(shape=(4, 64, 64))
    with pytest.raises(ValueError, match="dtype"):
        synthetic.make_nuclei_2d(shape=(64, 64), dtype=bool)
    _, labels3 = synthetic.make_nuclei_3d(shape=(16, 96, 96), n=4, z_spacing=2.0)
    assert labels3.max() == 4


# --- napari sample data ----------------------------------------------------


def _sample_functions():
    from napari_sam import _sample_data

    return {
        "cell": _sample_data.cell,
        "astronaut": _sample_data.astronaut,
        "nuclei_2d": _sample_data.nuclei_2d,
        "nuclei_3d": _sample_data.nuclei_3d,
        "multichannel_16bit": _sample_data.multichannel_16bit,
    }


def test_sample_data_layer_tuples():
    functions = _sample_functions()
    assert set(functions) == SAMPLE_KEYS
    expected = {
        "cell": ((660, 550), np.uint8),
        "astronaut": ((512, 512, 3), np.uint8),
        "nuclei_2d": ((512, 512), np.uint16),
        "nuclei_3d": ((32, 256, 256), np.uint16),
        "multichannel_16bit": ((3, 384, 384), np.uint16),
    }
    for key, function in functions.items():
        (layer,) = function()
        data, kwargs, layer_type = layer
        assert layer_type == "image"
        assert (data.shape, data.dtype) == expected[key], key
        assert kwargs["name"]
    assert functions["astronaut"]()[0][1]["rgb"] is True
    kwargs = functions["multichannel_16bit"]()[0][1]
    assert kwargs["channel_axis"] == 0 and len(kwargs["name"]) == 3
    assert functions["nuclei_3d"]()[0][1]["scale"] == (3.0, 1.0, 1.0)


@pytest.mark.gui
@pytest.mark.parametrize(
    ("key", "n_layers", "shape"),
    [
        ("cell", 1, (660, 550)),
        ("astronaut", 1, (512, 512, 3)),
        ("nuclei_2d", 1, (512, 512)),
        ("nuclei_3d", 1, (32, 256, 256)),
        ("multichannel_16bit", 3, (384, 384)),
    ],
)
def test_open_sample_in_napari(make_napari_viewer, key, n_layers, shape):
    _require_installed()
    from napari.layers import Image

    viewer = make_napari_viewer()
    viewer.open_sample("napari-sam", key)
    assert len(viewer.layers) == n_layers
    for layer in viewer.layers:
        assert isinstance(layer, Image)
        assert layer.data.shape == shape
    if key == "multichannel_16bit":
        assert [layer.name for layer in viewer.layers] == list(
            synthetic.MULTICHANNEL_NAMES
        )
