"""Parity of our SAM 2.1 image encoder (Hiera + FPN neck) with Meta's reference."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from src_core.model.sam2.image_encoder import (
    SAM2_ENCODER_CONFIGS,
    Sam2EncoderConfig,
    build_image_encoder,
)

YAML_NAMES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}

# Small enough to run in well under a second, yet exercising every path: several
# heads, windowed and global blocks, window padding (window 6 on an 8 x 8 grid),
# query pooling inside padded windows (window 6 -> 3 on the last transition).
REDUCED = Sam2EncoderConfig(
    embed_dim=32,
    num_heads=2,
    stages=(1, 2, 2, 1),
    global_att_blocks=(2, 4),
    window_pos_embed_bkg_spatial_size=(7, 7),
    window_spec=(8, 4, 6, 4),
    d_model=64,
)


def _meta_encoder(config: Sam2EncoderConfig) -> torch.nn.Module:
    """Meta's ImageEncoder built from its own classes with the config's arguments."""
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    trunk = Hiera(
        embed_dim=config.embed_dim,
        num_heads=config.num_heads,
        q_pool=config.q_pool,
        q_stride=config.q_stride,
        stages=config.stages,
        dim_mul=config.dim_mul,
        head_mul=config.head_mul,
        window_pos_embed_bkg_spatial_size=config.window_pos_embed_bkg_spatial_size,
        window_spec=config.window_spec,
        global_att_blocks=config.global_att_blocks,
    )
    neck = FpnNeck(
        PositionEmbeddingSine(config.d_model, warmup_cache=False),
        d_model=config.d_model,
        backbone_channel_list=config.backbone_channel_list,
        fpn_interp_model=config.fpn_interp_model,
        fuse_type=config.fuse_type,
        fpn_top_down_levels=config.fpn_top_down_levels,
    )
    return ImageEncoder(trunk, neck, scalp=config.scalp)


def _yaml_encoder(size: str) -> torch.nn.Module:
    """Meta's ImageEncoder instantiated from the image_encoder node of its SAM 2.1 yaml."""
    import sam2
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = Path(sam2.__file__).parent / "configs" / "sam2.1" / f"sam2.1_hiera_{YAML_NAMES[size]}.yaml"
    return instantiate(OmegaConf.load(path).model.image_encoder)


def _randomize_(model: torch.nn.Module, seed: int) -> None:
    """Seeded random values for every parameter, the zero-initialized position embeddings too.

    Weights get a fan-in scale so activations stay O(1) through the depth;
    norms and biases get small offsets so they are exercised.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "pos_embed" in name:
                param.copy_(noise * 0.5)
            elif param.ndim >= 2:
                param.copy_(noise / math.sqrt(param[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)


def _pair(config: Sam2EncoderConfig, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Meta's encoder with random weights and ours loaded strictly from it, both eval."""
    meta = _meta_encoder(config)
    _randomize_(meta, seed)
    ours = build_image_encoder(config)
    ours.load_state_dict(meta.state_dict(), strict=True)
    return meta.eval(), ours.eval()


def _max_rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's magnitude (at least 1)."""
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    return float((ours.float() - ref.float()).abs().max()) / max(1.0, float(ref.float().abs().max()))


def _compare(ours: dict, ref: dict, tol: float) -> dict[str, float]:
    """Every output of the two encoders, level by level; returns the differences."""
    assert ours.keys() == ref.keys() == {"vision_features", "vision_pos_enc", "backbone_fpn"}
    diffs = {"vision_features": _max_rel_diff(ours["vision_features"], ref["vision_features"])}
    for key in ("backbone_fpn", "vision_pos_enc"):
        assert len(ours[key]) == len(ref[key])
        for level, (a, b) in enumerate(zip(ours[key], ref[key])):
            diffs[f"{key}[{level}]"] = _max_rel_diff(a, b)
    assert max(diffs.values()) <= tol, diffs
    return diffs


@pytest.mark.parametrize(
    ("changes", "shape"),
    [
        ({}, (1, 3, 128, 128)),
        # Bilinear top-down on every level, averaged, nothing scalped, non-square batch.
        (
            {"fpn_interp_model": "bilinear", "fpn_top_down_levels": None, "fuse_type": "avg", "scalp": 0},
            (2, 3, 128, 192),
        ),
    ],
)
def test_reduced_encoder_matches_reference(changes, shape):
    pytest.importorskip("sam2")
    from dataclasses import replace

    config = replace(REDUCED, **changes)
    meta, ours = _pair(config, seed=1)
    image = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, out = meta(image), ours(image)
    _compare(out, ref, tol=1e-5)
    # The scalped pyramid: stride 4, 8, 16 (and 32 when nothing is scalped).
    levels = 4 - config.scalp
    sizes = [tuple(f.shape[-2:]) for f in out["backbone_fpn"]]
    assert sizes == [(shape[2] // 4 >> i, shape[3] // 4 >> i) for i in range(levels)]
    assert out["vision_features"] is out["backbone_fpn"][-1]


def test_tiny_encoder_matches_reference_at_1024():
    pytest.importorskip("sam2")
    torch.manual_seed(0)
    meta, ours = _pair(SAM2_ENCODER_CONFIGS["tiny"], seed=3)
    image = torch.randn((1, 3, 1024, 1024), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref, out = meta(image), ours(image)
    diffs = _compare(out, ref, tol=1e-5)
    assert out["vision_features"].shape == (1, 256, 64, 64)
    assert [tuple(p.shape[-2:]) for p in out["vision_pos_enc"]] == [(256, 256), (128, 128), (64, 64)]
    print("tiny@1024 max relative differences:", diffs)


def test_autocast_bfloat16_follows_reference():
    """Same dtypes as the reference under CPU autocast, values close."""
    pytest.importorskip("sam2")
    meta, ours = _pair(REDUCED, seed=5)
    image = torch.randn((1, 3, 128, 128), generator=torch.Generator().manual_seed(6))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref, out = meta(image), ours(image)
    # bfloat16 carries ~3 significant digits; the two run the same operations.
    _compare(out, ref, tol=2e-2)


@pytest.mark.parametrize("size", list(SAM2_ENCODER_CONFIGS))
def test_sizes_match_yaml_configs(size):
    """Keys, shapes and geometry (heads, windows, pooling, neck) equal the yaml-built reference."""
    pytest.importorskip("sam2")
    pytest.importorskip("hydra")
    meta = _yaml_encoder(size)
    with torch.device("meta"):  # our side needs no memory: keys and shapes only
        ours = build_image_encoder(size)
    meta_shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert our_shapes.keys() == meta_shapes.keys()
    assert our_shapes == meta_shapes

    def _q(stride):
        return tuple(stride) if stride else None

    def _blocks(trunk):
        return [(b.dim, b.dim_out, b.attn.num_heads, b.window_size, _q(b.q_stride)) for b in trunk.blocks]

    assert _blocks(ours.trunk) == _blocks(meta.trunk)
    assert ours.trunk.stage_ends == meta.trunk.stage_ends
    assert ours.trunk.channel_list == list(meta.trunk.channel_list)
    assert ours.scalp == meta.scalp
    for attr in ("d_model", "backbone_channel_list", "fpn_top_down_levels", "fpn_interp_model", "fuse_type"):
        mine, theirs = getattr(ours.neck, attr), getattr(meta.neck, attr)
        if isinstance(theirs, (list, tuple)):  # the yaml gives ListConfig-backed lists
            mine, theirs = list(mine), list(theirs)
        assert mine == theirs, attr
    for attr in ("num_pos_feats", "temperature", "normalize", "scale"):
        assert getattr(ours.neck.position_encoding, attr) == getattr(meta.neck.position_encoding, attr), attr


def test_position_encoding_is_cached_per_grid_and_batched():
    from src_core.model.sam2.position_encoding import PositionEmbeddingSine

    pe = PositionEmbeddingSine(64)
    a = pe(torch.zeros(2, 64, 8, 12))
    b = pe(torch.zeros(1, 64, 8, 12))
    assert a.shape == (2, 64, 8, 12) and a.dtype == torch.float32
    assert torch.equal(a[1], b[0])
    # The first half encodes y (constant along x), the second x (constant along y).
    assert torch.equal(a[0, :32, :, 0], a[0, :32, :, 5])
    assert torch.equal(a[0, 32:, 0, :], a[0, 32:, 7, :])
    a.add_(1)  # callers may modify their copy without touching the cache
    assert torch.equal(pe(torch.zeros(1, 64, 8, 12)), b)


def test_patch_grid_must_fit_the_window_embedding():
    ours = build_image_encoder(REDUCED).eval()
    with pytest.raises(ValueError, match="multiple of the window"):
        ours(torch.zeros(1, 3, 112, 128))
