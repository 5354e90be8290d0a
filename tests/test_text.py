"""Text prompts (src_core.text, ``segment/track --text``, the "SAM text" panel).

No real CLIP weights can be had here, so what CLIP *means* is not tested. What is:
tokenizing offline, the crops CLIP sees, that the ranking, threshold and top-k follow
the similarities the model gives (a stand-in CLIP whose towers read colours, so that
"red" matches exactly the red object), the missing-extra and offline errors, the
weights' download and verification (a local HTTP server), loading OpenAI-layout state
dicts and TorchScript files, a random-weights open_clip ViT-B-32 plugged in, and the
three entry points end to end.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import math
import socket
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from src_core.cli import text as cli_text
from src_core.cli import main
from src_core.text import (
    CLIP_WEIGHTS,
    DEFAULT_NEGATIVES,
    ClipScorer,
    NoCandidates,
    NoMatch,
    TextExtraMissing,
    TextPromptError,
    clip_weights_path,
    context_box,
    extract_crop,
    get_tokenizer,
    import_open_clip,
    load_clip,
    mask_box,
    matches_to_labels,
    segment_text,
    select_matches,
    tokenize,
)
from src_core.text import clip as clip_module
from src_core.text.crops import OPENAI_MEAN, OPENAI_STD, preprocess, to_clip_tensor
from standin_predictor import StandInPredictor

RED, ORANGE, BLUE = (255, 0, 0), (255, 128, 0), (0, 0, 255)


# --------------------------------------------------------------------------
# A stand-in CLIP: the image tower reads the crop's centre colour, the text
# tower maps "red"/"green"/"blue" to colour axes (anything else to grey).
# --------------------------------------------------------------------------


class ColourClip(torch.nn.Module):
    """cos(crop, "red") is the redness of the crop's centre; generic texts are grey
    (cosine 0 with any colour). ``scale`` is the logit scale (CLIP's is 100)."""

    def __init__(self, tokenizer, image_size: int = 32, scale: float = 2.0) -> None:
        super().__init__()
        self.visual = types.SimpleNamespace(image_size=image_size)
        self.words = {tokenizer.encode(w)[0]: k for k, w in enumerate(("red", "green", "blue"))}
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(scale)))
        self.images_seen = 0

    def encode_image(self, x):
        self.images_seen += len(x)
        rgb = x * torch.tensor(OPENAI_STD).view(1, 3, 1, 1) + torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
        s = x.shape[-1]
        centre = rgb[:, :, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4].mean(dim=(2, 3))
        return centre - centre.mean(dim=1, keepdim=True)

    def encode_text(self, tokens):
        out = torch.zeros(len(tokens), 3)
        for i, row in enumerate(tokens.tolist()):
            for t in row:
                if t in self.words:
                    out[i, self.words[t]] = 1.0
        out[out.sum(1) == 0] = 1.0
        return out


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer()


@pytest.fixture
def scorer(tokenizer):
    return ClipScorer(ColourClip(tokenizer))


def colour_image(size=64, background=20):
    """Red, orange and blue squares on a dark background; their masks."""
    image = np.full((size, size, 3), background, np.uint8)
    boxes = {"red": (5, 5, 25, 25), "orange": (38, 5, 58, 25), "blue": (20, 40, 40, 60)}  # x0, y0, x1, y1
    masks = {}
    for name, colour in (("red", RED), ("orange", ORANGE), ("blue", BLUE)):
        x0, y0, x1, y1 = boxes[name]
        image[y0:y1, x0:x1] = colour
        masks[name] = np.zeros((size, size), bool)
        masks[name][y0:y1, x0:x1] = True
    return image, masks


def predictor_for(image):
    predictor = StandInPredictor()
    predictor.set_image(image)
    return predictor


# --------------------------------------------------------------------------
# Tokenizing (offline), bad text
# --------------------------------------------------------------------------


def test_tokenizing_works_offline(monkeypatch, tokenizer):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(clip_module, "_tokenizers", {})  # a fresh tokenizer, made offline
    tokens = tokenize(["a nucleus", "  cell  "])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    assert tokens[0, 0] == 49406  # start of text
    fresh = get_tokenizer()
    assert tokens[1, 1 : 1 + len(fresh.encode("cell"))].tolist() == fresh.encode("cell")


def test_empty_and_overlong_text_are_refused(tokenizer, scorer):
    for bad in ("", "   ", "\n\t"):
        with pytest.raises(TextPromptError, match="empty"):
            tokenize([bad], tokenizer)
    fits = " ".join(["cell"] * 75)  # 75 word tokens + start + end = 77
    assert tokenize([fits], tokenizer).shape == (1, 77)
    with pytest.raises(TextPromptError, match="78 tokens long.*at most 77"):
        tokenize([fits + " cell"], tokenizer)
    with pytest.raises(TextPromptError, match="negative text"):
        tokenize(["cell", " "], tokenizer, ["text", "negative text"])

    class MustNotRun:
        def generate(self, *args, **kwargs):
            raise AssertionError("the image work started before the text was checked")

    image, _ = colour_image()
    for bad, message in (("  ", "empty"), ("cell " * 80, "tokens long")):
        with pytest.raises(TextPromptError, match=message):
            segment_text(predictor_for(image), image, bad, scorer=scorer, generator=MustNotRun())
    with pytest.raises(TextPromptError, match="threshold"):
        segment_text(predictor_for(image), image, "red", scorer=scorer, generator=MustNotRun(), threshold=1.5)
    with pytest.raises(TextPromptError, match="top_k"):
        segment_text(predictor_for(image), image, "red", scorer=scorer, generator=MustNotRun(), top_k=0)


# --------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------


def test_crop_geometry_and_backgrounds():
    image, masks = colour_image()
    assert mask_box(masks["red"]) == (5, 5, 25, 25)
    assert mask_box(np.zeros((4, 4), bool)) is None
    # square around the box's centre, grown by the context on each side
    assert context_box((10, 20, 30, 30), 0.1) == (8, 13, 32, 37)
    assert context_box((0, 0, 10, 40), 0.0) == (-15, 0, 25, 40)
    with pytest.raises(ValueError, match="context"):
        context_box((0, 0, 1, 1), -0.5)

    none, box = extract_crop(image, masks["red"], 32, background="none")
    assert box == (3, 3, 27, 27) and none.shape == (32, 32, 3) and none.dtype == np.uint8
    assert np.array_equal(none, preprocess(image[3:27, 3:27], 32))
    blank, _ = extract_crop(image, masks["red"], 32, background="blank")
    blur, _ = extract_crop(image, masks["red"], 32, background="blur")
    fill = np.array([round(255 * m) for m in OPENAI_MEAN], np.uint8)
    centre = (slice(8, 24), slice(8, 24))
    assert np.array_equal(blank[centre], none[centre]) and np.array_equal(blur[centre], none[centre])
    assert np.all(blank[0, 0] == fill) and np.all(blank[31, 31] == fill)  # outside the mask: grey
    # blurred outside: next to the object the dark background takes some of its red
    outside = np.all(blank == fill, axis=-1)
    assert blur[outside][:, 0].astype(int).sum() > none[outside][:, 0].astype(int).sum() + 200
    assert np.array_equal(blur[~outside], none[~outside])

    # at the border, the square reaches outside the image: padded with the mean colour
    edge = np.zeros((64, 64), bool)
    edge[0:10, 0:10] = True
    crop, box = extract_crop(image, edge, 32, background="none", context=0.5)
    assert box == (-5, -5, 15, 15)
    assert np.all(crop[0, 0] == fill) and np.all(crop[24, 24] == RED)
    with pytest.raises(ValueError, match="empty"):
        extract_crop(image, np.zeros((64, 64), bool))
    with pytest.raises(ValueError, match="background"):
        extract_crop(image, masks["red"], background="sepia")


def test_clip_preprocessing():
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = 200  # the centre square
    out = preprocess(wide, 16)
    assert out.shape == (16, 16, 3) and out[8, 8, 0] == 200
    mean_pixel = np.array([[[[round(255 * m) for m in OPENAI_MEAN]]]], np.uint8)
    tensor = to_clip_tensor(mean_pixel)
    assert tensor.shape == (1, 3, 1, 1) and torch.allclose(tensor, torch.zeros(1, 3, 1, 1), atol=0.01)


# --------------------------------------------------------------------------
# Scoring, selection, refinement
# --------------------------------------------------------------------------


def test_scores_are_the_models_similarities(scorer):
    image, masks = colour_image()
    crops = np.stack([extract_crop(image, masks[k], 32)[0] for k in ("blue", "red", "orange")])
    scores = scorer.score(crops, "red", list(DEFAULT_NEGATIVES))
    # redness: red > orange > blue, and the probabilities follow CLIP's scaled softmax
    assert scores.similarity[1] > scores.similarity[2] > scores.similarity[0]
    assert scores.probability[1] > scores.probability[2] > scores.probability[0]
    cos = np.concatenate([scores.similarity[:, None], scores.negative_similarity], axis=1)
    expected = np.exp(2.0 * cos) / np.exp(2.0 * cos).sum(axis=1, keepdims=True)
    assert np.allclose(scores.probability, expected[:, 0], atol=1e-5)
    assert np.allclose(scores.negative_similarity, 0, atol=1e-5)  # generic texts are grey
    assert scorer.logit_scale == pytest.approx(2.0)


def test_select_matches():
    scores = np.array([0.2, 0.9, 0.6, 0.9, 0.5])
    assert select_matches(scores, threshold=0.5).tolist() == [1, 3, 2, 4]
    assert select_matches(scores, threshold=0.5, top_k=2).tolist() == [1, 3]
    assert select_matches(scores, threshold=None, top_k=1, tiebreak=np.array([0, 0, 0, 1, 0])).tolist() == [3]
    assert select_matches(scores, threshold=0.95).tolist() == []
    assert select_matches(scores, threshold=0.0).tolist() == [1, 3, 2, 4, 0]


def test_segment_text_keeps_the_matching_objects(scorer):
    image, masks = colour_image()
    candidates = [masks["blue"], masks["orange"], masks["red"]]
    predictor = predictor_for(image)

    def run(**kwargs):
        return segment_text(predictor, image, "red", scorer=scorer, candidates=candidates, set_image=False, **kwargs)

    one = run(threshold=0.7)  # red 0.72, orange 0.67, blue 0.18 with the stand-in's scale 2
    assert [m.candidate for m in one] == [2]
    assert np.array_equal(one[0].mask, masks["red"]) and one[0].box.tolist() == [5, 5, 25, 25]
    assert [m.candidate for m in run(threshold=0.5)] == [2, 1]
    assert [m.candidate for m in run(threshold=0.0)] == [2, 1, 0]
    assert [m.candidate for m in run(threshold=0.0, top_k=1)] == [2]
    scores = [m.score for m in run(threshold=0.0)]
    assert scores == sorted(scores, reverse=True) and 0.7 < scores[0] < 0.75
    # the other colour when the text names it
    assert [m.candidate for m in segment_text(
        predictor, image, "blue", scorer=scorer, candidates=candidates, set_image=False, threshold=0.7)] == [0]
    labels = matches_to_labels(run(threshold=0.5), image.shape[:2])
    assert labels.dtype == np.uint16 and labels[10, 10] == 1 and labels[10, 45] == 2 and labels[50, 30] == 0
    with pytest.raises(NoMatch, match=r"best scored 0\.72 \(threshold 0\.90\)"):
        run(threshold=0.9)


def test_refinement_from_boxes_and_parts(scorer):
    image, masks = colour_image()
    predictor = predictor_for(image)
    rough = masks["red"].copy()
    rough[12:16, 5:25] = False  # a candidate with a gap: SAM from its box fills it
    part = np.zeros_like(rough)
    part[12:25, 5:25] = True  # a part of the red square, as red: dropped under the whole one
    matches = segment_text(predictor, image, "red", scorer=scorer, candidates=[rough, part],
                           set_image=False, threshold=0.5)
    assert len(matches) == 1 and np.array_equal(matches[0].mask, masks["red"])
    assert matches[0].predicted_iou == pytest.approx(0.9)  # the stand-in's, from the refinement
    unrefined = segment_text(predictor, image, "red", scorer=scorer, candidates=[rough],
                             set_image=False, threshold=0.5, refine=False)
    assert np.array_equal(unrefined[0].mask, rough) and math.isnan(unrefined[0].predicted_iou)
    # boxes as candidates: each segmented by SAM first
    from_boxes = segment_text(predictor_for(image), image, "red", scorer=scorer,
                              boxes=[[38, 5, 58, 25], [4, 4, 26, 26]], threshold=0.7)
    assert [m.candidate for m in from_boxes] == [1] and np.array_equal(from_boxes[0].mask, masks["red"])


def test_segment_everything_and_refinement_share_one_embedding(scorer):
    """With SAM's own generator on the same model, the image is encoded once, and the
    predictor holds it afterwards (as set_image=True promises)."""
    from src_core import SamPredictor
    from src_core.automatic import SamAutomaticMaskGenerator
    from src_core.model.build import build_sam_from_config
    from tiny_geometry import TINY_256

    torch.manual_seed(0)
    model = build_sam_from_config(TINY_256)
    calls = []
    hook = model.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    predictor = SamPredictor(model)
    generator = SamAutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    image, _ = colour_image()
    try:
        matches = segment_text(predictor, image, "red", scorer=scorer, generator=generator, threshold=0, top_k=2)
    finally:
        hook.remove()
    assert matches and len(calls) == 1
    assert predictor.is_image_set and generator.predictor is not predictor and not generator.keep_embedding
    assert not generator.predictor.is_image_set  # the generator's own predictor frees its embedding
    # unshared (a crop layer: the last crop's embedding is not the image's): encoded again to refine
    calls.clear()
    hook = model.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    layered = SamAutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0,
                                        crop_n_layers=1)
    try:
        segment_text(SamPredictor(model), image, "red", scorer=scorer, generator=layered, threshold=0, top_k=1)
    finally:
        hook.remove()
    assert len(calls) == 1 + 4 + 1  # whole image and 4 crops, then the refinement


def test_no_candidates(scorer):
    image, _ = colour_image()

    class Nothing:
        def generate(self, rgb, progress=None, should_stop=None):
            return []

    with pytest.raises(NoCandidates, match="found no object to compare with 'red'"):
        segment_text(predictor_for(image), image, "red", scorer=scorer, generator=Nothing())
    with pytest.raises(NoCandidates, match="given candidates"):
        segment_text(predictor_for(image), image, "red", scorer=scorer, candidates=[np.zeros((64, 64), bool)])


# --------------------------------------------------------------------------
# Planes larger than the model sees whole: tile by tile
# --------------------------------------------------------------------------


def large_colour_image():
    """A 300 x 330 plane: 20-px red and blue squares, some across tile sides (tiles of
    64 px overlapping by 24), and a 90-px red square larger than a tile."""
    image = np.full((300, 330, 3), 20, np.uint8)
    squares = [("red", 10, 10), ("blue", 50, 30), ("red", 120, 35), ("red", 30, 150), ("blue", 200, 180),
               ("red", 250, 260), ("blue", 280, 100)]
    masks = []
    for name, x, y in squares:
        image[y : y + 20, x : x + 20] = RED if name == "red" else BLUE
        masks.append((name, (x, y, x + 20, y + 20)))
    image[190:280, 20:110] = RED
    masks.append(("red", (20, 190, 110, 280)))
    return image, masks


class TileComponents:
    """Segment everything on a tile: one record per bright connected component."""

    def __init__(self, tiles=None):
        self.tiles = tiles if tiles is not None else []  # the shapes it was given

    def cancel(self):
        pass

    def generate(self, rgb):
        self.tiles.append(rgb.shape[:2])
        from scipy import ndimage as ndi

        gray = rgb.astype(float).mean(axis=-1)
        components, count = ndi.label(gray > 40)
        return [{"segmentation": components == k, "predicted_iou": 0.9} for k in range(1, count + 1)]


def test_clip_crops_read_around_a_candidate_are_the_whole_image_crops(monkeypatch):
    from src_core.text import read_clip_crop
    from src_core.text import tiled as tiled_module
    from src_core.tiling import TiledImage

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (120, 150, 3), dtype=np.uint8)
    source = TiledImage(rgb)
    boxes = [(0, 0, 10, 30), (60, 40, 100, 90), (140, 100, 150, 120), (30, 5, 40, 119)]  # x0, y0, x1, y1
    for x0, y0, x1, y1 in boxes:
        mask = np.zeros(rgb.shape[:2], bool)
        mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.8
        mask[y0, x0] = mask[y1 - 1, x1 - 1] = True  # the box is the rectangle
        crop = mask[y0:y1, x0:x1]
        for background in ("blur", "blank", "none"):
            whole, _ = extract_crop(rgb, mask, 32, background=background, context=0.2)
            read = read_clip_crop(source, crop, (y0, x0), 32, background=background, context=0.2)
            np.testing.assert_array_equal(read, whole)
    # past MAX_CROP_READ the square is read from every k-th pixel: nearly the same crop
    from scipy import ndimage as ndi

    field = ndi.gaussian_filter(rgb.astype(float), (8, 8, 0))
    smooth = TiledImage(((field - field.min()) / np.ptp(field) * 255).astype(np.uint8))
    mask = np.ones((80, 90), bool)
    exact = read_clip_crop(smooth, mask, (20, 30), 32, background="none")
    steps = []
    read_rgb = smooth.read_rgb
    monkeypatch.setattr(smooth, "read_rgb", lambda tile: steps.append(tile.step) or read_rgb(tile))
    monkeypatch.setattr(tiled_module, "MAX_CROP_READ", 40)
    coarse = read_clip_crop(smooth, mask, (20, 30), 32, background="none")
    assert steps == [3] and coarse.shape == (32, 32, 3)
    assert np.abs(coarse.astype(int) - exact.astype(int)).mean() < 12


def test_segment_text_tiled_finds_what_the_whole_image_search_finds(scorer):
    """Tile by tile, the same objects and scores as on the whole plane: squares cut by
    tile sides come out whole, the one larger than a tile too."""
    from src_core.jobs import Cancelled
    from src_core.text import segment_text_tiled
    from src_core.tiling import TiledPredictor

    image, objects = large_colour_image()
    whole_candidates = [c["segmentation"] for c in TileComponents().generate(image)]
    whole = segment_text(predictor_for(image), image, "red", scorer=scorer, candidates=whole_candidates,
                         set_image=False, threshold=0.6)
    seen = []
    tiled = TiledPredictor(StandInPredictor(), tile_size=64, overlap=24)
    found = segment_text_tiled(tiled, image, "red", scorer=scorer, generator=TileComponents(), threshold=0.6,
                               progress=lambda done, total: seen.append((done, total)))
    reds = sorted(box for name, box in objects if name == "red")
    assert sorted(tuple(int(v) for v in m.box) for m in found) == reds
    assert sorted(tuple(int(v) for v in m.box) for m in whole) == reds
    by_box = {tuple(int(v) for v in m.box): m for m in whole}
    for m in found:
        reference = by_box[tuple(int(v) for v in m.box)]
        assert m.score == pytest.approx(reference.score, abs=1e-6)
        y0, x0 = m.offset
        np.testing.assert_array_equal(m.mask, reference.mask[y0 : y0 + m.mask.shape[0], x0 : x0 + m.mask.shape[1]])
    assert [m.score for m in found] == sorted((m.score for m in found), reverse=True)
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] == len(tiled.grid) + 2
    labels = np.zeros(image.shape[:2], np.uint16)
    for k in range(len(found) - 1, -1, -1):
        found[k].paste(labels, k + 1)
    assert set(np.unique(labels)) == set(range(len(found) + 1)) and labels[200, 50] > 0 and labels[40, 60] == 0
    # the other colour, top-k, and the errors of the whole-image search
    blue = segment_text_tiled(tiled, image, "blue", scorer=scorer, generator=TileComponents(), threshold=0.6, top_k=2)
    assert len(blue) == 2 and all(image[int(m.box[1]) + 5, int(m.box[0]) + 5].tolist() == list(BLUE) for m in blue)
    with pytest.raises(NoMatch, match="none of the 8 candidates"):
        segment_text_tiled(tiled, image, "green", scorer=scorer, generator=TileComponents(), threshold=0.9)
    with pytest.raises(NoCandidates, match="tile by tile"):
        segment_text_tiled(tiled, np.full_like(image, 20), "red", scorer=scorer, generator=TileComponents())
    with pytest.raises(TextPromptError, match="empty"):
        segment_text_tiled(tiled, image, "  ", scorer=scorer, generator=TileComponents())
    with pytest.raises(Cancelled):
        segment_text_tiled(tiled, image, "red", scorer=scorer, generator=TileComponents(), should_stop=lambda: True)


def test_cli_segment_text_on_a_large_plane(capsys, tiny_sam, stand_in_clip, tmp_path, monkeypatch):
    """A plane past the tiling threshold (4x the 256-px input of TINY_256): found tile by
    tile, written as a tiled TIFF; the same as the whole-image output's form."""
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    image = np.full((200, 1100, 3), 20, np.uint8)
    for x in (40, 300, 620, 1000):
        image[60:110, x : x + 50] = RED
    image[120:170, 500:550] = BLUE
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, image)
    out = tmp_path / "labels.tif"
    code = main(["segment", str(path), "--checkpoint", str(tiny_sam), "-o", str(out), *LOOSE,
                 "--text", "red", "--threshold", "0", "--top-k", "3"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "tile by tile" in err and "matching 'red'" in err
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].is_tiled
        labels = tif.asarray()
    lines = stdout.strip().splitlines()
    assert labels.dtype == np.uint16 and labels.shape == (200, 1100) and 1 <= len(lines) <= 3
    areas = [int(line.split("area ")[1].split()[0]) for line in lines]
    assert areas == [int((labels == k + 1).sum()) for k in range(len(lines))]
    scores = [float(line.split("text score ")[1].split()[0]) for line in lines]
    assert scores == sorted(scores, reverse=True)


# --------------------------------------------------------------------------
# The optional extra, open_clip without torchvision
# --------------------------------------------------------------------------


def test_missing_extra_is_explained(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # "import open_clip" now fails
    monkeypatch.setattr(clip_module, "_tokenizers", {})
    with pytest.raises(TextExtraMissing, match=r"napari-sam\[text\].*--no-deps open_clip_torch==3\.3\.0"):
        import_open_clip()
    with pytest.raises(TextExtraMissing):
        tokenize(["cell"])
    with pytest.raises(TextExtraMissing):
        load_clip(cache=tmp_path)  # before any download
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, colour_image()[0])
    code = main(["segment", str(image), "--text", "cell", "-o", str(tmp_path / "out.tif")])
    err = capsys.readouterr().err
    assert code == 2 and "napari-sam[text]" in err and "--no-deps" in err and "Traceback" not in err


def test_open_clip_imports_without_torchvision_and_leaves_no_placeholder():
    open_clip = import_open_clip()
    assert hasattr(open_clip, "get_tokenizer")
    from src_core.text._openclip import _PlaceholderModule

    for name, module in list(sys.modules.items()):
        if name == "torchvision" or name.startswith("torchvision."):
            assert not isinstance(module, _PlaceholderModule), name
    transform = sys.modules["open_clip.transform"]
    if isinstance(transform.Normalize, type) and transform.Normalize.__module__ == "torchvision.transforms" \
            and not hasattr(sys.modules.get("torchvision.transforms"), "Normalize"):
        with pytest.raises(ImportError, match="torchvision"):
            transform.Normalize((0.5,), (0.5,))  # a placeholder: any use says what is missing


# --------------------------------------------------------------------------
# Weights: cache, offline error, download and verification, loading
# --------------------------------------------------------------------------


@pytest.fixture
def file_server(tmp_path):
    """Serves tmp_path/www over HTTP on 127.0.0.1; yields (base URL, folder, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    log = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            log.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_offline_errors_name_the_url_and_the_place(tmp_path):
    dest = tmp_path / "clip" / "ViT-B-32.pt"
    with pytest.raises(FileNotFoundError) as info:
        clip_weights_path(cache=tmp_path, download=False)
    message = str(info.value)
    assert CLIP_WEIGHTS.url in message and str(dest) in message and "--clip-checkpoint" in message
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RuntimeError) as info:
        clip_weights_path(cache=tmp_path, url=f"http://127.0.0.1:{port}/ViT-B-32.pt")
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and str(dest) in message and "network" in message
    assert CLIP_WEIGHTS.size is None and CLIP_WEIGHTS.folder == "clip"
    assert CLIP_WEIGHTS.sha256 in CLIP_WEIGHTS.url  # OpenAI publishes the checksum in the URL
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clip_weights_path(tmp_path / "nope.pt")


def test_download_verifies_by_sha256_and_caches(monkeypatch, file_server, tmp_path):
    base, root, log = file_server
    blob = bytes(range(256)) * 300
    (root / "weights.pt").write_bytes(blob)
    info = type(CLIP_WEIGHTS)("CLIP test", f"{base}/weights.pt", None, hashlib.sha256(blob).hexdigest(), folder="clip")
    monkeypatch.setattr(clip_module, "CLIP_WEIGHTS", info)
    seen = []
    path = clip_weights_path(cache=tmp_path / "cache", progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "cache" / "clip" / "weights.pt" and path.read_bytes() == blob
    assert seen[-1] == (len(blob), len(blob))  # the size comes from the server when unknown
    assert clip_weights_path(cache=tmp_path / "cache", download=False) == path
    assert len(log) == 1  # cached: no second request
    # a wrong file on the server is refused and not kept
    bad = type(CLIP_WEIGHTS)("CLIP test", f"{base}/weights.pt", None, "0" * 64, folder="clip")
    monkeypatch.setattr(clip_module, "CLIP_WEIGHTS", bad)
    with pytest.raises(RuntimeError, match="corrupt"):
        clip_weights_path(cache=tmp_path / "other")
    assert not any((tmp_path / "other" / "clip").iterdir())


def tiny_open_clip():
    """A small CLIP built by open_clip (OpenAI layout: 64-wide towers, 1 block each)."""
    open_clip = import_open_clip()
    torch.manual_seed(0)
    return open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=64, layers=1, width=64, patch_size=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
        quick_gelu=True,
    ).eval()


def test_loading_state_dicts_and_torchscript(monkeypatch, tmp_path):
    model = tiny_open_clip()
    plain = tmp_path / "clip_state.pt"
    torch.save(model.state_dict(), plain)
    scorer = load_clip(plain)
    assert scorer.image_size == 64
    tokens = tokenize(["a cell"])
    with torch.no_grad():
        assert torch.allclose(scorer.model.encode_text(tokens), model.encode_text(tokens), atol=1e-5)

    # OpenAI's format: a TorchScript archive, opened only when its sha256 is the expected one
    archive = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.trace_module(model, {"encode_text": (tokens,)}), str(archive))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(clip_module, "CLIP_WEIGHTS", type(CLIP_WEIGHTS)("CLIP", "http://x/ViT-B-32.pt", None, digest))
    from_archive = load_clip(archive)
    with torch.no_grad():
        assert torch.allclose(from_archive.model.encode_text(tokens), model.encode_text(tokens), atol=1e-5)

    monkeypatch.setattr(clip_module, "CLIP_WEIGHTS", type(CLIP_WEIGHTS)("CLIP", "http://x/ViT-B-32.pt", None, "1" * 64))

    def refuse(*args, **kwargs):
        raise AssertionError("a TorchScript file with an unknown checksum was opened")

    monkeypatch.setattr(torch.jit, "load", refuse)
    with pytest.raises(ValueError, match="neither OpenAI's ViT-B-32 file"):
        load_clip(archive)
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an OpenAI-layout CLIP model"):
        load_clip(tmp_path / "other.pt")


def test_real_open_clip_vit_b_32_plugs_in():
    """open_clip's ViT-B-32 with random weights (the released ones can't be had here)."""
    open_clip = import_open_clip()
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    scorer = ClipScorer(model)
    assert scorer.image_size == 224 and scorer.logit_scale == pytest.approx(1 / 0.07, rel=1e-3)
    image, masks = colour_image()
    candidates = [masks["red"], masks["blue"]]
    matches = segment_text(predictor_for(image), image, "a red square", scorer=scorer, candidates=candidates,
                           negatives=["a blue square"], set_image=False, threshold=0.0, refine=False)
    assert sorted(m.candidate for m in matches) == [0, 1]
    assert all(0.0 <= m.score <= 1.0 and -1.0 <= m.similarity <= 1.0 for m in matches)
    assert matches[0].score >= matches[1].score


# --------------------------------------------------------------------------
# Command line: segment --text, track --text
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory) -> Path:
    from src_core.model.build import build_sam_from_config
    from tiny_geometry import TINY_256

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "tiny.pth"
    torch.save(build_sam_from_config(TINY_256).state_dict(), path)
    return path


@pytest.fixture
def stand_in_clip(monkeypatch, tokenizer):
    made = []

    def make(args):
        made.append(ClipScorer(ColourClip(tokenizer)))
        return made[-1]

    monkeypatch.setattr(cli_text, "make_scorer", make)
    return made


# random SAM weights: accept every mask segment everything proposes
LOOSE = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


def test_cli_segment_text_with_sam2(capsys, stand_in_clip, tmp_path, monkeypatch):
    """``segment --text`` with a SAM 2.1 checkpoint: SAM 2.1's candidates, CLIP's choice."""
    from src_core.model.sam2.sam2_base import build_sam2_model

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": {k: v.half() for k, v in build_sam2_model("tiny").state_dict().items()}}, checkpoint)
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, colour_image()[0])
    out = tmp_path / "labels.tif"
    code = main(["segment", str(image), "--checkpoint", str(checkpoint), "-o", str(out), *LOOSE,
                 "--text", "red", "--threshold", "0", "--top-k", "2", "--dtype", "bfloat16"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "loading the sam2.1_hiera_tiny model" in err and "matching 'red'" in err
    labels = tifffile.imread(out)
    lines = stdout.strip().splitlines()
    assert labels.shape == (64, 64) and 1 <= len(lines) <= 2
    assert set(np.unique(labels)) - {0} == set(range(1, len(lines) + 1))


def test_cli_segment_text(capsys, tiny_sam, stand_in_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, colour_image()[0])
    out = tmp_path / "labels.tif"
    common = [str(image), "--checkpoint", str(tiny_sam), "-o", str(out), *LOOSE]
    code = main(["segment", *common, "--text", "red", "--negative-text", "green", "--threshold", "0", "--top-k", "3"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    labels = tifffile.imread(out)
    lines = stdout.strip().splitlines()
    assert labels.dtype == np.uint16 and labels.shape == (64, 64) and 1 <= len(lines) <= 3
    assert set(np.unique(labels)) - {0} == set(range(1, len(lines) + 1))
    scores = [float(line.split("text score ")[1].split()[0]) for line in lines]
    assert scores == sorted(scores, reverse=True) and "matching 'red'" in err
    assert stand_in_clip[0].model.images_seen >= len(lines)

    def error(*argv):
        code = main(["segment", *common, *argv])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        return err.strip().splitlines()[-1]

    assert "--text is empty" in error("--text", "  ")
    assert "leave out --point" in error("--text", "red", "--point", "3,3")
    assert "tokens long" in error("--text", "red " * 80)
    assert "--threshold must be between 0 and 1" in error("--text", "red", "--threshold", "2")
    assert "found no object" in error("--text", "red", "--pred-iou-thresh", "1.5")
    assert "none of the" in error("--text", "blue", "--threshold", "1")


def test_cli_segment_text_offline(capsys, tiny_sam, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, colour_image()[0])
    code = main(["segment", str(image), "--checkpoint", str(tiny_sam), "-o", str(tmp_path / "o.tif"),
                 "--text", "red", "--no-download"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and CLIP_WEIGHTS.url in err and str(tmp_path / "cache" / "clip" / "ViT-B-32.pt") in err


def test_cli_track_from_text(capsys, tiny_sam, stand_in_clip, tmp_path):
    frames = np.full((4, 64, 64, 3), 20, np.uint8)
    for t in range(4):
        frames[t, 5:25, 5 + 2 * t : 25 + 2 * t] = RED
        frames[t, 40:60, 20:40] = BLUE
    video = tmp_path / "video.npy"
    np.save(video, frames)
    out = tmp_path / "out"
    argv = ["track", str(video), "-o", str(out), "--checkpoint", str(tiny_sam), "--text", "red",
            "--text-frame", "1", "--threshold", "0", "--top-k", "2", "--no-video", *LOOSE]
    code = main(argv)
    stdout, err = capsys.readouterr()
    assert code == 0, err
    saved = json.loads((out / "text_prompts.json").read_text())["prompts"]
    assert 1 <= len(saved) <= 2 and [p["id"] for p in saved] == list(range(1, len(saved) + 1))
    assert all(p["frame"] == 1 and len(p["box"]) == 4 for p in saved)
    from src_core.propagate import open_labels

    labels = np.asarray(open_labels(out / "labels.zarr"))
    assert labels.shape == (4, 64, 64) and set(np.unique(labels)) <= set(range(len(saved) + 1))
    assert "object 1: box" in stdout and "tracked" in stdout
    assert main(argv) == 0  # the same run again: complete, nothing redone
    assert "already holds this run" in capsys.readouterr().err
    assert len(stand_in_clip) == 1

    for extra, message in (
        (["--prompts", str(tmp_path / "p.json")], "one of them"),
        (["--text-frame", "9"], "--text-frame 9 is not in the frames"),
    ):
        code = main([*argv, "--overwrite", *extra])
        assert code == 2 and message in capsys.readouterr().err
    code = main(["track", str(video), "-o", str(out)])
    assert code == 2 and "--prompts FILE or --text TEXT" in capsys.readouterr().err


# --------------------------------------------------------------------------
# The "SAM text" panel
# --------------------------------------------------------------------------


class ComponentGenerator:
    """Segment everything's interface: one record per bright connected component."""

    def __init__(self):
        self.calls = 0
        self.hold = None  # an Event: wait (after setting it) until cancelled

    def cancel(self):
        pass

    def generate(self, image, progress=None, should_stop=None):
        import time

        from scipy import ndimage as ndi

        from src_core.jobs import Cancelled

        self.calls += 1
        if self.hold is not None:
            self.hold.set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if should_stop():
                    raise Cancelled("cancelled")
                time.sleep(0.01)
        gray = image.astype(float).mean(axis=-1)
        components, count = ndi.label(gray > gray.mean())
        if progress is not None:
            progress(1, 1)
        return [{"segmentation": components == k, "predicted_iou": 0.9} for k in range(1, count + 1)]


@pytest.fixture
def text_widget(make_napari_viewer, qtbot, tokenizer):
    from napari_sam._widget import SegmentAnythingWidget

    def make(data, scorer_factory=None):
        viewer = make_napari_viewer()
        viewer.add_image(data, name="img", rgb=True)
        w = SegmentAnythingWidget(viewer)
        w.session.set_predictor(StandInPredictor(), "stand-in")
        qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=5000)
        generator = ComponentGenerator()
        w.text.generator_factory = lambda predictor, settings: generator
        w.text.scorer_factory = scorer_factory or (lambda predictor, report: ClipScorer(ColourClip(tokenizer)))
        return viewer, w, generator

    return make


def find(qtbot, w, text, threshold=0.7):
    w.text.text_edit.setText(text)
    w.text.threshold_box.setValue(threshold)
    w.text.run()
    qtbot.waitUntil(lambda: w.session.idle and w.text.find_button.isEnabled(), timeout=20000)


@pytest.mark.gui
def test_panel_finds_previews_commits_and_tracks(text_widget, qtbot):
    from napari_sam import _layers as L
    from napari_sam import _track_layers as TL

    image, masks = colour_image()
    stack = np.stack([image, image])  # (T, Y, X, 3): the matches can also start tracking
    viewer, w, generator = text_widget(stack)
    viewer.dims.set_current_step(0, 1)
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None and w.session.embedded[1] == (1,), timeout=5000)
    labels, preview = w.session.layers[L.LABELS], w.session.layers[L.PREVIEW]
    labels.data[1, 0:3, 0:3] = 4  # an earlier object: new ids go above it
    find(qtbot, w, "red", threshold=0.5)
    assert generator.calls == 1 and len(w.text.matches) == 2 and w.text.match_plane == (1,)
    assert preview.data[1][masks["red"]].tolist() == [1] * 400  # best match = 1
    assert set(np.unique(preview.data[1][masks["orange"]])) == {2} and preview.data[0].max() == 0
    assert "2 objects match 'red'" in w.status.text()

    w.text.track_matches()  # boxes for the Track panel, new ids, on frame 1
    boxes = w.track.layers[TL.BOXES]
    assert len(boxes.data) == 2 and sorted(np.asarray(boxes.features["obj_id"]).tolist()) == [1, 2]
    assert np.allclose(boxes.data[0][:, 0], 1)
    prompts = TL.collect_track_prompts(w.track.layers[TL.PROMPTS], boxes, w.track.layers[TL.TRACKS])
    assert [p.box.tolist() for p in prompts] == [[5, 5, 25, 25], [38, 5, 58, 25]]

    w.commit()  # like any prompt: new ids, one undo step
    assert labels.data[1, 10, 10] == 5 and labels.data[1, 10, 45] == 6 and labels.data[1, 50, 30] == 0
    assert w.text.matches is None and preview.data.max() == 0
    labels.undo()
    assert labels.data[1, 10, 10] == 0 and labels.data[1, 1, 1] == 4

    find(qtbot, w, "blue")  # threshold 0.7: only the blue square
    assert len(w.text.matches) == 1 and preview.data[1, 50, 30] == 1 and preview.data[1, 10, 10] == 0
    w.clear()  # Q drops the matches
    assert w.text.matches is None and preview.data.max() == 0
    w.commit()
    assert labels.data[1].max() == 4


@pytest.mark.gui
def test_panel_on_a_large_plane_goes_tile_by_tile(make_napari_viewer, qtbot, tokenizer):
    """A plane past the tiling threshold: found tile by tile (nothing plane-sized is
    embedded), previewed, committed crop by crop as one undo step."""
    from types import SimpleNamespace

    from napari_sam import _layers as L
    from napari_sam._widget import SegmentAnythingWidget
    from src_core.tiling import TiledPredictor

    class Sized(StandInPredictor):  # declares the 256-px input of TINY_256; records what it embeds
        model = SimpleNamespace(image_encoder=SimpleNamespace(img_size=256))
        shapes: list = []

        def set_image(self, image, **kwargs):
            self.shapes.append(np.shape(image)[:2])
            super().set_image(image, **kwargs)

    image = np.full((1100, 1100, 3), 20, np.uint8)
    reds = [(100, 100), (240, 600), (700, 230), (900, 980)]  # (row, col) of 40-px squares
    for r, c in reds:
        image[r : r + 40, c : c + 40] = RED
    image[500:540, 500:540] = BLUE
    viewer = make_napari_viewer()
    viewer.add_image(image, name="big", rgb=True)
    w = SegmentAnythingWidget(viewer)
    w.use_cache.setChecked(False)
    w.session.set_predictor(Sized(), "stand-in")
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=20000)
    tiles = []
    w.text.generator_factory = lambda predictor, settings: TileComponents(tiles)
    w.text.scorer_factory = lambda predictor, report: ClipScorer(ColourClip(tokenizer))
    w.text.tiled_factory = lambda predictor, plan: TiledPredictor(Sized(), *plan)
    Sized.shapes.clear()
    labels, preview = w.session.layers[L.LABELS], w.session.layers[L.PREVIEW]
    labels.data[0:3, 0:3] = 7
    find(qtbot, w, "red", threshold=0.6)
    assert len(tiles) == 36 and max(max(t) for t in tiles) == 256  # 6 x 6 tiles, none larger
    assert Sized.shapes and max(max(s) for s in Sized.shapes) <= 256  # refined in tiles too
    assert len(w.text.matches) == 4 and "4 objects match 'red'" in w.status.text()
    assert sorted(preview.data[r + 20, c + 20] for r, c in reds) == [1, 2, 3, 4]
    assert preview.data[520, 520] == 0 and (preview.data > 0).sum() == 4 * 1600
    w.commit()
    assert sorted(labels.data[r + 20, c + 20] for r, c in reds) == [8, 9, 10, 11]
    assert (labels.data > 7).sum() == 4 * 1600 and preview.data.max() == 0
    labels.undo()
    assert labels.data.max() == 7 and labels.data[1, 1] == 7


@pytest.mark.gui
def test_panel_errors_are_shown(text_widget, qtbot):
    image, _ = colour_image()

    def missing(predictor, report):
        raise TextExtraMissing("text prompts need the optional text extra (open_clip)")

    viewer, w, generator = text_widget(image, missing)
    w.text.run()  # no text typed: nothing runs
    assert generator.calls == 0 and w.session.idle
    find(qtbot, w, "red")
    assert "optional text extra" in w.status.text() and w.text.matches is None
    w.text.scorer_factory = lambda predictor, report: ClipScorer(ColourClip(get_tokenizer()))
    find(qtbot, w, "red", threshold=1.0)
    assert "none of the 3 candidates matches 'red'" in w.status.text() and w.text.matches is None
    find(qtbot, w, "cell " * 80)
    assert "tokens long" in w.status.text() and generator.calls == 1
    generator.hold = threading.Event()
    w.text.text_edit.setText("red")
    w.text.run()
    assert generator.hold.wait(10) and not w.text.find_button.isEnabled()
    w.cancel()  # the widget's Cancel reaches the text search
    qtbot.waitUntil(lambda: w.session.idle and w.text.find_button.isEnabled(), timeout=20000)
    assert "cancelled" in w.status.text() and w.text.matches is None
