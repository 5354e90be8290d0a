"""The torchvision stand-in behaves like torchvision where the reference uses it."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops.boxes import batched_nms, box_area
from torchvision.transforms.functional import resize, to_pil_image


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    ix = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    iy = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    inter = ix * iy
    union = float(box_area(a[None])[0]) + float(box_area(b[None])[0]) - inter
    return inter / union


def _loop_batched_nms(boxes, scores, idxs, threshold):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    kept = []
    for i in order:
        if all(
            idxs[i] != idxs[k] or _iou(boxes[i], boxes[k]) <= threshold for k in kept
        ):
            kept.append(i)
    return kept


def _random_boxes(generator, n, extent=100.0):
    xy = torch.rand(n, 2, generator=generator) * extent
    wh = torch.rand(n, 2, generator=generator) * extent / 3 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7])
def test_batched_nms_matches_loop_reference(seed, threshold):
    g = torch.Generator().manual_seed(seed)
    boxes = _random_boxes(g, 60)
    scores = torch.rand(60, generator=g)
    idxs = torch.randint(0, 3, (60,), generator=g)
    keep = batched_nms(boxes, scores, idxs, threshold)
    assert keep.dtype == torch.int64
    assert keep.tolist() == _loop_batched_nms(boxes, scores, idxs.tolist(), threshold)
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])


def test_batched_nms_is_class_aware():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    scores = torch.tensor([0.5, 0.9, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0]), 0.5).tolist() == [1]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [1, 2]
    # The reference passes float category ids.
    assert batched_nms(boxes, scores, torch.zeros(3), 0.5).tolist() == [1]


def test_batched_nms_chain_is_greedy():
    # Each box overlaps only its neighbours: greedy keeps every other one.
    x = torch.arange(50, dtype=torch.float32) * 5
    boxes = torch.stack([x, torch.zeros(50), x + 10, torch.full((50,), 10.0)], dim=1)
    keep = batched_nms(boxes, torch.linspace(1, 0, 50), torch.zeros(50), 0.3)
    assert keep.tolist() == list(range(0, 50, 2))


def test_batched_nms_empty():
    keep = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64


def test_box_area():
    boxes = torch.tensor([[0.0, 0, 2, 3], [1, 1, 4, 5]])
    assert box_area(boxes).tolist() == [6.0, 12.0]


def test_to_pil_image_and_resize_use_pil_bilinear():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    pil = to_pil_image(rgb)
    assert pil.mode == "RGB"
    assert to_pil_image(rgb[..., 0]).mode == "L"
    out = np.array(resize(pil, (12, 20)))
    expected = np.array(Image.fromarray(rgb).resize((20, 12), Image.BILINEAR))
    assert out.shape == (12, 20, 3)
    np.testing.assert_array_equal(out, expected)


def test_segment_anything_imports():
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor  # noqa: F401
    from segment_anything.utils.transforms import ResizeLongestSide  # noqa: F401


def test_to_tensor_scales_uint8_only():
    from torchvision.transforms import ToTensor

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    out = ToTensor()(rgb)
    assert out.dtype == torch.float32 and out.shape == (3, 7, 9)
    assert torch.equal(out, torch.from_numpy(rgb).permute(2, 0, 1).float().div(255))
    assert torch.equal(ToTensor()(Image.fromarray(rgb)), out)
    floats = rng.random((7, 9, 3)).astype(np.float32) * 255
    assert torch.equal(ToTensor()(floats), torch.from_numpy(floats).permute(2, 0, 1))


@pytest.mark.parametrize("size", [(12, 20), (70, 45), (30, 50)])
def test_resize_matches_pil_float_bilinear(size):
    """Antialiased bilinear on tensors agrees with PIL's bilinear (always antialiased)
    on a float ("F") image, which torchvision documents as the goal of antialias=True."""
    from torchvision.transforms import Resize

    rng = np.random.default_rng(2)
    plane = rng.random((30, 50)).astype(np.float32)
    out = Resize(size)(torch.from_numpy(plane)[None])
    expected = np.asarray(Image.fromarray(plane, mode="F").resize(size[::-1], Image.BILINEAR))
    assert out.shape == (1, *size)
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-5)
    same = torch.from_numpy(plane)[None]
    assert torch.equal(Resize((30, 50))(same), same)  # same size: unchanged


def test_normalize_and_scripting_as_sam2_uses_them():
    from torchvision.transforms import Normalize, Resize

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    scripted = torch.jit.script(torch.nn.Sequential(Resize((16, 16)), Normalize(mean, std)))
    x = torch.rand(3, 16, 16)
    expected = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.equal(scripted(x), expected)
    assert scripted(torch.rand(3, 40, 24)).shape == (3, 16, 16)


def test_sam2_transforms_import():
    pytest.importorskip("sam2")
    from sam2.utils.transforms import SAM2Transforms

    transforms = SAM2Transforms(resolution=32, mask_threshold=0.0)
    rgb = np.random.default_rng(3).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    assert transforms(rgb).shape == (3, 32, 32)
