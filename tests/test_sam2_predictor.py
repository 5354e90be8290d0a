"""SAM 2.1 checkpoints, ``build_sam2`` and ``SAM2ImagePredictor``.

Registry entries and loading: files holding random weights (SAM 2.1 tiny saved as
Meta saves its checkpoints, ``{"model": state_dict}``; a SAM 1 model; a SAM 2.0-like
file) are loaded strictly or refused with a message naming what they hold, and an
official entry is downloaded from a local HTTP server into the cache and loaded from
there.

Parity: Meta's ``SAM2ImagePredictor`` on Meta's ``SAM2Base`` (built with hydra from
``sam2.1_hiera_t.yaml`` with the image predictor's decoder settings, seeded random
weights, see tests/test_sam2_model.py) against ours on the same weights, at the real
1024-pixel input, on a natural image and every kind of prompt.
"""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest
import torch

from src_core import checkpoints
from src_core.checkpoints import CHECKPOINTS, SAM2_CHECKPOINTS, checkpoint_info
from src_core.model.sam2.build import (
    build_sam2,
    describe_sam2_state_dict,
    infer_sam2_size,
)
from src_core.sam2_predictor import SAM2ImagePredictor

TOL = 1e-4  # relative to the output's magnitude (at least 1)
SIZES = ("tiny", "small", "base_plus", "large")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def meta_model():
    """Meta's SAM2Base (tiny, 1024 px, as its build_sam2 makes it), seeded random weights."""
    pytest.importorskip("sam2")
    pytest.importorskip("hydra")
    from test_sam2_model import PREDICTOR_DECODER_ARGS, _meta_model, _randomize

    torch.manual_seed(0)
    ref = _meta_model("tiny", 1024, PREDICTOR_DECODER_ARGS)
    _randomize(ref, seed=0)
    return ref.eval()


@pytest.fixture(scope="module")
def tiny_state():
    """A SAM 2.1 tiny state dict with the official keys (random weights, float16 to keep
    files small: a strict load checks keys and shapes, and casts)."""
    from src_core.model.sam2.sam2_base import build_sam2_model

    torch.manual_seed(1)
    return {k: v.half() for k, v in build_sam2_model("tiny").state_dict().items()}


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory, tiny_state):
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": tiny_state}, path)
    return path


@pytest.fixture(scope="module")
def sam1_file(tmp_path_factory):
    from tiny_geometry import TINY_256

    from src_core.model.build import build_sam_from_config

    path = tmp_path_factory.mktemp("sam1") / "sam_vit_tiny.pth"
    torch.save({"model": build_sam_from_config(TINY_256).state_dict()}, path)
    return path


# --------------------------------------------------------------------------
# Registry, download, loading
# --------------------------------------------------------------------------


def test_registry_entries():
    assert set(SAM2_CHECKPOINTS) == {f"sam2.1_hiera_{s}" for s in SIZES}
    for size in SIZES:
        name = f"sam2.1_hiera_{size}"
        info = checkpoint_info(name)
        assert info is SAM2_CHECKPOINTS[name] and info.name == name and info.family == "sam2"
        assert info.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{name}.pt"
        assert info.filename == f"{name}.pt"
        assert info.size is None and info.sha256 is None  # Meta publishes neither
    # the SAM 1 registry is unchanged: everything that lists it sees SAM 1 types only
    assert set(CHECKPOINTS) == {"vit_h", "vit_l", "vit_b"}
    assert all(info.family == "sam" for info in CHECKPOINTS.values())
    with pytest.raises(ValueError, match="sam2.1_hiera_tiny"):
        checkpoint_info("sam2.1_hiera_huge")


def test_loads_official_layout_strictly(tiny_file, tiny_state):
    model = build_sam2("sam2.1_hiera_tiny", checkpoint=tiny_file, device="cpu")
    assert not model.training and model.device.type == "cpu"
    state = model.state_dict()
    assert list(state) == list(tiny_state)
    assert all(torch.equal(state[k], tiny_state[k].float()) for k in state)
    # the image predictor's decoder settings, as Meta's build_sam2 applies them
    assert model.sam_mask_decoder.dynamic_multimask_via_stability
    assert model.weights_id.startswith("sam2.1_hiera_tiny-file-")
    assert infer_sam2_size(tiny_state) == "tiny"
    assert describe_sam2_state_dict(tiny_state) == "a SAM 2.1 tiny model"


def test_refuses_sam1_file(sam1_file):
    with pytest.raises(ValueError, match="holds a SAM 1 vit_tiny model") as err:
        build_sam2("sam2.1_hiera_tiny", checkpoint=sam1_file, device="cpu")
    assert "build_sam" in str(err.value)


def test_refuses_other_size(tiny_file):
    with pytest.raises(ValueError, match="does not fit a SAM 2.1 large model: it holds a SAM 2.1 tiny model") as err:
        build_sam2("sam2.1_hiera_large", checkpoint=tiny_file, device="cpu")
    assert "model_type='sam2.1_hiera_tiny'" in str(err.value)


def test_refuses_sam20_layout(tiny_state):
    old = {k: v for k, v in tiny_state.items()
           if k != "no_obj_embed_spatial" and not k.startswith("obj_ptr_tpos_proj.")}  # fmt: skip
    with pytest.raises(ValueError, match=r"holds a SAM 2\.0 \(not 2\.1\) tiny model.*missing keys"):
        build_sam2("tiny", checkpoint=old, device="cpu")


def test_dtypes(tiny_state):
    """bfloat16 runs under autocast with the encoder's trunk in bfloat16 (the rest of
    the weights stay float32), and its masks agree with float32; float16 is refused."""
    from parity_helpers import astronaut_image, mask_iou

    with pytest.raises(ValueError, match="expected float32 or bfloat16"):
        build_sam2("tiny", checkpoint=tiny_state, device="cpu", dtype=torch.float16)
    model = build_sam2("tiny", checkpoint=tiny_state, device="cpu", dtype="bfloat16")
    assert model.autocast_dtype == torch.bfloat16
    assert model.image_encoder.trunk.patch_embed.proj.weight.dtype == torch.bfloat16
    assert model.image_encoder.neck.convs[0].conv.weight.dtype == torch.float32
    assert model.memory_attention.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    model32 = build_sam2("tiny", checkpoint=tiny_state, device="cpu")
    assert model32.autocast_dtype is None
    image = astronaut_image(240, 320)
    clicks = np.random.default_rng(0).uniform([0, 0], [320, 240], (8, 1, 2))
    autocast_only = build_sam2("tiny", checkpoint=tiny_state, device="cpu")
    autocast_only.autocast_dtype = torch.bfloat16  # float32 trunk under autocast, as Meta's
    masks = []
    for m in (model32, model, autocast_only):
        predictor = SAM2ImagePredictor(m)
        predictor.set_image(image)
        assert predictor.get_image_embedding().dtype == torch.float32
        masks.append([
            predictor.predict(point_coords=c, point_labels=np.array([1]), multimask_output=False)[0][0] > 0
            for c in clicks
        ])
    # random weights make some masks hinge on tiny logits, so bfloat16 loses a few
    # percent on them either way: held to the median over clicks, against float32 and
    # against a float32 trunk under autocast (how Meta's package runs bfloat16)
    ious = [mask_iou(a, b) for a, b in zip(masks[0], masks[1])]
    ious_autocast = [mask_iou(a, b) for a, b in zip(masks[0], masks[2])]
    assert all(a.any() for a in masks[0])
    assert np.median(ious) >= 0.97 and np.median(ious) >= np.median(ious_autocast) - 0.01, (ious, ious_autocast)


def test_download_into_cache_then_load_from_cache(tmp_path, tiny_file, tiny_state, monkeypatch):
    """The official entry fetched from a local server (the size is unknown: the server's
    length is checked), then found in the cache without downloading."""
    handler = functools.partial(_QuietHandler, directory=str(tiny_file.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        host, port = httpd.server_address[:2]
        url = f"http://{host}:{port}/{tiny_file.name}"
        seen = []
        path = checkpoints.download_checkpoint(
            "sam2.1_hiera_tiny", cache=tmp_path, url=url, progress=lambda d, t: seen.append((d, t))
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
    assert path == tmp_path / "checkpoints" / "sam2.1_hiera_tiny.pt"
    assert path.read_bytes() == tiny_file.read_bytes()
    assert seen[-1] == (tiny_file.stat().st_size,) * 2
    assert not path.with_name(path.name + ".part").exists()
    assert checkpoints.cached_checkpoint("sam2.1_hiera_tiny", tmp_path) == path
    # a second download finds it (nothing is served any more)
    assert checkpoints.download_checkpoint("sam2.1_hiera_tiny", cache=tmp_path, url=url) == path

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))
    model = build_sam2("sam2.1_hiera_tiny", device="cpu", download=False)
    assert torch.equal(model.no_mem_embed, tiny_state["no_mem_embed"].float())
    with pytest.raises(FileNotFoundError, match="sam2.1_hiera_small"):
        build_sam2("sam2.1_hiera_small", device="cpu", download=False)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


# --------------------------------------------------------------------------
# Parity with Meta's SAM2ImagePredictor
# --------------------------------------------------------------------------


def _rel(ours, ref) -> float:
    ours, ref = torch.as_tensor(ours), torch.as_tensor(ref)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, (ours.shape, ref.shape)
    return float((ours.double() - ref.double()).abs().max()) / max(1.0, float(ref.abs().max()))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _astronaut(h: int = 480, w: int = 640) -> np.ndarray:
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.BILINEAR))


@pytest.fixture(scope="module")
def predictors(meta_model):
    from sam2.sam2_image_predictor import SAM2ImagePredictor as MetaPredictor

    ours = build_sam2("sam2.1_hiera_tiny", checkpoint=meta_model.state_dict(), device="cpu")
    image = _astronaut()
    ref_pred, our_pred = MetaPredictor(meta_model), SAM2ImagePredictor(ours)
    ref_pred.set_image(image)
    our_pred.set_image(image)
    return ref_pred, our_pred, image


WORST: dict[str, float] = {}


def _compare(ours: tuple, ref: tuple, where: str, logits: bool = False) -> None:
    masks, ious, low = ours
    ref_masks, ref_ious, ref_low = ref
    assert masks.shape == ref_masks.shape and masks.dtype == ref_masks.dtype, where
    if logits:
        WORST["logits"] = max(WORST.get("logits", 0.0), _rel(masks, ref_masks))
        assert WORST["logits"] <= TOL, where
        masks, ref_masks = masks > 0, ref_masks > 0
    for ours_mask, ref_mask in zip(masks.reshape(-1, *masks.shape[-2:]), ref_masks.reshape(-1, *masks.shape[-2:])):
        iou = _iou(ours_mask, ref_mask)
        WORST["mask_iou"] = min(WORST.get("mask_iou", 1.0), iou)
        assert iou >= 0.999, (where, iou)
    for key, a, b in (("iou_predictions", ious, ref_ious), ("low_res", low, ref_low)):
        WORST[key] = max(WORST.get(key, 0.0), _rel(a, b))
        assert WORST[key] <= TOL, (where, key, WORST[key])


def test_preprocessing_matches(predictors):
    """Exactly the model input Meta's transforms make, from numpy and from PIL."""
    from PIL import Image

    ref_pred, our_pred, image = predictors
    ref = ref_pred._transforms(image)
    assert torch.equal(our_pred._to_input(image), ref)
    from src_core.sam2_predictor import _image_array

    assert torch.equal(our_pred._to_input(_image_array(Image.fromarray(image))), ref)


def test_image_features_match(predictors):
    ref_pred, our_pred, _ = predictors
    assert _rel(our_pred.get_image_embedding(), ref_pred.get_image_embedding()) <= TOL
    for ours, ref in zip(our_pred._features["high_res_feats"], ref_pred._features["high_res_feats"]):
        assert _rel(ours, ref) <= TOL
    assert our_pred._orig_hw == [(480, 640)] and [tuple(hw) for hw in ref_pred._orig_hw] == [(480, 640)]


PROMPTS = {
    "point, multimask": dict(point_coords=np.array([[300.0, 200.0]]), point_labels=np.array([1])),
    "point, single": dict(point_coords=np.array([[300.0, 200.0]]), point_labels=np.array([1]),
                          multimask_output=False),
    "points and box": dict(point_coords=np.array([[300.0, 200.0], [100.0, 400.0]]),
                           point_labels=np.array([1, 0]), box=np.array([150.0, 40.0, 460.0, 470.0]),
                           multimask_output=False),
    "box only, multimask": dict(box=np.array([150.0, 40.0, 460.0, 470.0])),
    "box only, logits": dict(box=np.array([150.0, 40.0, 460.0, 470.0]), multimask_output=False,
                             return_logits=True),
    "normalized point": dict(point_coords=np.array([[0.5, 0.4]]), point_labels=np.array([1]),
                             normalize_coords=False),
    "three boxes at once": dict(box=np.array([[150.0, 40.0, 460.0, 470.0], [0, 0, 200, 200],
                                              [400, 300, 639, 479]]), multimask_output=False),
    "points per object": dict(point_coords=np.array([[[300.0, 200.0]], [[500.0, 100.0]]]),
                              point_labels=np.array([[1], [1]])),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PROMPTS))
def test_predict_matches(predictors, name):
    ref_pred, our_pred, _ = predictors
    kwargs = PROMPTS[name]
    ours = our_pred.predict(**kwargs)
    ref = ref_pred.predict(**kwargs)
    _compare(ours, ref, name, logits=kwargs.get("return_logits", False))


def test_mask_input_round_trip(predictors):
    """A click, then a second click with the best earlier low-resolution logits."""
    ref_pred, our_pred, _ = predictors
    first = dict(point_coords=np.array([[300.0, 200.0]]), point_labels=np.array([1]))
    ours, ref = our_pred.predict(**first), ref_pred.predict(**first)
    best = int(np.argmax(ref[1]))
    assert best == int(np.argmax(ours[1]))
    second = dict(point_coords=np.array([[300.0, 200.0], [320.0, 420.0]]), point_labels=np.array([1, 1]),
                  multimask_output=False)
    _compare(our_pred.predict(**second, mask_input=ours[2][best][None]),
             ref_pred.predict(**second, mask_input=ref[2][best][None]), "mask input")
    print("worst differences:", WORST)


def test_batch_matches(meta_model, predictors):
    _, our_pred, image = predictors
    from sam2.sam2_image_predictor import SAM2ImagePredictor as MetaPredictor

    images = [image, np.ascontiguousarray(image[::-1, :400])]
    ref_b, our_b = MetaPredictor(meta_model), SAM2ImagePredictor(our_pred.model)
    ref_b.set_image_batch(images)
    our_b.set_image_batch(images)
    kwargs = dict(point_coords_batch=[np.array([[300.0, 200.0]]), np.array([[100.0, 50.0]])],
                  point_labels_batch=[np.array([1]), np.array([1])],
                  box_batch=[None, np.array([10.0, 10.0, 300.0, 400.0])])
    ours, ref = our_b.predict_batch(**kwargs), ref_b.predict_batch(**kwargs)
    assert len(ours[0]) == len(ref[0]) == 2
    for i in range(2):
        _compare((ours[0][i], ours[1][i], ours[2][i]), (ref[0][i], ref[1][i], ref[2][i]), f"image {i}")
    with pytest.raises(RuntimeError, match="set_image_batch"):
        our_pred.predict_batch()


def test_scientific_images_and_errors(predictors):
    """16-bit and grayscale images go through to_rgb; prompts before an image fail."""
    from src_core.preprocess import to_rgb
    from src_core.sam2_predictor import _image_array

    _, our_pred, image = predictors
    gray16 = (image[..., 1].astype(np.uint16) * 200 + 7)
    np.testing.assert_array_equal(_image_array(gray16), to_rgb(gray16))
    assert _image_array(image) is image  # uint8 RGB: used as is, like Meta's
    fresh = SAM2ImagePredictor(our_pred.model)
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict(point_coords=np.array([[1.0, 1.0]]), point_labels=np.array([1]))
    fresh.set_image(gray16[:240, :320])
    masks, ious, low = fresh.predict(point_coords=np.array([[100.0, 100.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 240, 320) and masks.dtype == np.float32 and ious.shape == (3,)  # 0/1, as Meta returns them
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert low.shape == (3, 256, 256)
    fresh.reset_predictor()
    with pytest.raises(RuntimeError):
        fresh.get_image_embedding()
