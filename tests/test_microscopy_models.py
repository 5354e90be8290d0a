"""micro-sam's microscopy models and MobileSAM's vit_t in the registry: entries, the
layouts their files are stored in (random weights), and files refused for what they hold.

The layouts are those micro-sam writes and reads (micro_sam/util.py ``_load_checkpoint``,
micro_sam/bioimageio/model_export.py, micro_sam/training/training.py): the files it
publishes are SAM's state dict as it is ("bare"); its exports with the
instance-segmentation decoder are ``{"model_state": ..., "decoder_state": ...}``
("combined"); its training checkpoints hold ``"model_state"`` with every key under
``sam.`` beside the optimizer's state ("training").
"""

from __future__ import annotations

import pytest
import torch
from model_files import DECODER_KEYS, MICROSCOPY, random_state, save_in_layout

from src_core import checkpoints
from src_core.checkpoints import (
    MICROSCOPY_CHECKPOINTS,
    SMALL_CHECKPOINTS,
    CheckpointInfo,
    checkpoint_info,
    checkpoint_path,
    default_model_type,
    file_digest,
    model_groups,
)
from src_core.model.build import MODEL_CONFIGS, build_sam, build_sam_from_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------


def test_microscopy_entries_are_micro_sams():
    assert list(MICROSCOPY_CHECKPOINTS) == MICROSCOPY
    for name, info in MICROSCOPY_CHECKPOINTS.items():
        assert info.name == name and info.group == "microscopy" and info.family == "sam"
        assert info.model_type == name[:5] and info.model_type in MODEL_CONFIGS
        assert info.checksum == ("xxh128", info.xxh128) and len(info.xxh128) == 32
        assert info.filename == f"{name}.pt" and info.summary
    # as micro-sam 1.8.14's micro_sam/util.py publishes them
    lm = MICROSCOPY_CHECKPOINTS["vit_b_lm"]
    assert lm.url == "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/diplomatic-bug/1.2/files/vit_b.pt"
    assert lm.xxh128 == "fe9252a29f3f4ea53c15a06de471e186"
    histo = MICROSCOPY_CHECKPOINTS["vit_h_histopathology"]
    assert histo.url == "https://owncloud.gwdg.de/index.php/s/L7AcvVz7DoWJ2RZ/download"
    assert histo.xxh128 == "bd1856dafc156a43fb3aa705f1a6e92e"
    # every file has its own place in the cache, though many URLs end alike
    paths = {checkpoint_path(info) for info in checkpoints.sam_checkpoints().values()}
    assert len(paths) == len(checkpoints.sam_checkpoints())


def test_mobile_sam_entry():
    info = checkpoint_info("vit_t")
    assert info is SMALL_CHECKPOINTS["vit_t"] and info.group == "small"
    assert info.url == "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"
    assert info.filename == "mobile_sam.pt" and info.checksum is None  # MobileSAM publishes none
    assert checkpoints.size_estimate("vit_t") == 40_500_000
    assert checkpoints.size_estimate("vit_b_lm") == checkpoints.CHECKPOINTS["vit_b"].size


def test_groups_list_every_model_once():
    groups = model_groups()
    assert [g.title for g in groups] == [
        "Meta's SAM", "microscopy fine-tunes (micro-sam)", "small and fast", "built-in",
    ]
    names = [name for g in groups for name, _ in g.models]
    assert names == ["vit_h", "vit_l", "vit_b", *MICROSCOPY, "vit_t", "vit_tiny"]
    assert all(summary for g in groups for _, summary in g.models)
    assert model_groups(video=True)[-1].models[0][0] == "sam2.1_hiera_tiny"


def test_checkpoint_info_checksums_are_validated():
    with pytest.raises(ValueError, match="xxh128 must be 32 hex"):
        CheckpointInfo("x", "http://h/x.pt", None, None, xxh128="abc")
    with pytest.raises(ValueError, match="group"):
        CheckpointInfo("x", "http://h/x.pt", None, None, group="other")


def test_default_prefers_meta_then_microscopy(cache):
    assert default_model_type() == "vit_tiny"
    for name in ("vit_t", "vit_l_lm", "vit_b_em_organelles"):
        path = checkpoint_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert default_model_type() == "vit_l_lm"  # microscopy in registry order, before vit_t
    # a cached Meta model still comes first (Meta's files are recognised by their size)
    vit_b = checkpoints.CHECKPOINTS["vit_b"]
    with open(checkpoint_path("vit_b"), "wb") as f:
        f.truncate(vit_b.size)
    assert default_model_type() == "vit_b"


# --------------------------------------------------------------------------
# Layouts: every family, each file as micro-sam stores it (random weights)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("vit_t_lm", "bare"),
        ("vit_t_em_organelles", "combined"),
        ("vit_b_lm", "bare"),
        ("vit_b_medical_imaging", "combined"),
        ("vit_b_em_organelles", "training"),
        ("vit_l_lm", "combined"),
        ("vit_h_histopathology", "bare"),
    ],
)
def test_microscopy_file_loads_strictly_from_the_cache(cache, name, layout):
    info = MICROSCOPY_CHECKPOINTS[name]
    state = random_state(info.model_type, seed=len(name))
    path = checkpoint_path(name)
    path.parent.mkdir(parents=True)
    save_in_layout(state, layout, path)

    model = build_sam(name, device="cpu", dtype="float32", download=False)
    expected_encoder = "TinyViT" if info.model_type == "vit_t" else "ImageEncoderViT"
    assert type(model.image_encoder).__name__ == expected_encoder
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key in ("mask_decoder.iou_token.weight", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
                max(k for k in state if k.startswith("image_encoder."))):
        assert torch.equal(loaded[key], state[key]), key
    assert model.weights_id == f"{name}-xxh128-{info.xxh128[:16]}"


def test_mobile_sam_file_loads_as_vit_t_from_the_cache(cache):
    state = random_state("vit_t", seed=3)
    path = checkpoint_path("vit_t")
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    model = build_sam("vit_t", device="cpu", dtype="float32", download=False)
    assert model.image_encoder.img_size == 1024
    assert torch.equal(model.state_dict()["image_encoder.neck.0.weight"], state["image_encoder.neck.0.weight"])
    assert model.weights_id.startswith("vit_t-file-")  # no published checksum: the file's identity


def test_vit_t_encoder_runs_in_bfloat16():
    torch.manual_seed(0)
    model = build_sam_from_config(MODEL_CONFIGS["vit_t"]).set_encoder_dtype(torch.bfloat16)
    assert model.encoder_dtype == torch.bfloat16
    with torch.no_grad():
        embedding = model.encode_image(torch.randn(1, 3, 1024, 1024))
    assert embedding.dtype == torch.float32 and embedding.shape == (1, 256, 64, 64)


# --------------------------------------------------------------------------
# Files refused for what they hold
# --------------------------------------------------------------------------


def test_mobile_sam_file_loaded_as_vit_b_is_refused(tmp_path):
    path = tmp_path / "mobile_sam.pt"
    torch.save(random_state("vit_t"), path)
    with pytest.raises(ValueError, match=r"does not fit a 'vit_b' .*TinyViT.*use model_type='vit_t'"):
        build_sam("vit_b", checkpoint=path, device="cpu")
    with pytest.raises(ValueError, match=r"'vit_b_lm \(vit_b\)'.*TinyViT"):
        build_sam("vit_b_lm", checkpoint=path, device="cpu")
    assert type(build_sam("auto", checkpoint=path, device="cpu").image_encoder).__name__ == "TinyViT"


def test_decoder_file_loaded_as_a_model_is_refused(tmp_path):
    path = tmp_path / "vit_b_lm_decoder.pt"
    torch.save({k: torch.zeros(shape) for k, shape in DECODER_KEYS.items()}, path)
    for model_type in ("vit_b", "vit_b_lm", "auto"):
        with pytest.raises(ValueError, match="not a SAM model: it holds micro-sam's instance-segmentation decoder"):
            build_sam(model_type, checkpoint=path, device="cpu")


def test_published_file_under_another_name_is_refused(tmp_path, monkeypatch):
    """A local file is named by its published xxh128, whatever the file is called."""
    path = tmp_path / "vit_t.pt"  # micro-sam's files are all called vit_t.pt, vit_b.pt, ...
    torch.save(random_state("vit_t", seed=9), path)
    digest = file_digest(path, "xxh128")
    entries = dict(MICROSCOPY_CHECKPOINTS)
    entries["vit_t_lm"] = CheckpointInfo(
        "vit_t_lm", entries["vit_t_lm"].url, None, None, xxh128=digest, file="vit_t_lm.pt",
        architecture="vit_t", group="microscopy", summary="light microscopy on a CPU",
    )
    monkeypatch.setattr(checkpoints, "MICROSCOPY_CHECKPOINTS", entries)
    assert checkpoints.identify_checkpoint(path).name == "vit_t_lm"

    for other in ("vit_t_em_organelles", "vit_t"):
        with pytest.raises(ValueError, match=rf"is micro-sam's vit_t_lm .*not '{other}'.*model_type='vit_t_lm'"):
            build_sam(other, checkpoint=path, device="cpu")
    for model_type in ("auto", "vit_t_lm"):
        model = build_sam(model_type, checkpoint=path, device="cpu")
        assert model.weights_id == f"vit_t_lm-xxh128-{digest[:16]}"  # the published file's identity
    # a file the registry does not know (fine-tuned) loads under its architecture's name
    other = tmp_path / "finetuned.pt"
    torch.save(random_state("vit_t", seed=10), other)
    assert build_sam("vit_t", checkpoint=other, device="cpu").weights_id.startswith("vit_t-file-")


def test_vit_t_cannot_be_fine_tuned_yet():
    from src_core.train.trainer import TrainConfig, Trainer

    model = build_sam_from_config(MODEL_CONFIGS["vit_t"])
    with pytest.raises(ValueError, match="TinyViT.*cannot be fine-tuned"):
        Trainer(model, [object()], TrainConfig())


def test_train_command_names_microscopy_models(cache, tmp_path, capsys):
    """`napari-sam train --from vit_t_lm` finds micro-sam's cached file by its name, and
    says why a TinyViT model cannot be fine-tuned (one line, no traceback)."""
    import numpy as np
    import tifffile

    from src_core.cli import main

    path = checkpoint_path("vit_t_lm")
    path.parent.mkdir(parents=True)
    torch.save(random_state("vit_t", seed=2), path)
    data = tmp_path / "data"
    data.mkdir()
    labels = np.zeros((64, 64), np.int32)
    labels[10:30, 10:30] = 1
    tifffile.imwrite(data / "a.tif", (labels * 200).astype(np.uint8))
    tifffile.imwrite(data / "a_labels.tif", labels)
    code = main(["train", str(data), "-o", str(tmp_path / "tuned.pth"), "--from", "vit_t_lm",
                 "--steps", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be fine-tuned" in err and "Traceback" not in err
    code = main(["train", str(data), "-o", str(tmp_path / "tuned.pth"), "--from", "vit_q_lm"])
    assert code == 2 and "neither a model type" in capsys.readouterr().err
