"""Parity of SAM 2.1's memory encoder and memory attention with Meta's ``sam2``.

Meta's modules are built from the SAM 2.1 tiny config (all 2.1 sizes share these
two parts), every parameter randomized, and their state dicts loaded strictly
into ours; outputs are compared in float32, eval mode.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from src_core.model.sam2.memory_attention import (
    MemoryAttention,
    MemoryAttentionLayer,
    build_memory_attention,
)
from src_core.model.sam2.memory_encoder import build_memory_encoder
from src_core.model.sam2.position_encoding import PositionEmbeddingSine
from src_core.model.sam2.rope import RoPEAttention, apply_rope, axial_rope_angles

TOL = 1e-5  # on outputs of order one (LayerNorm outputs); relative to the scale otherwise


def _config(part: str):
    sam2 = pytest.importorskip("sam2")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    yaml = Path(sam2.__file__).parent / "configs" / "sam2.1" / "sam2.1_hiera_t.yaml"
    return instantiate(OmegaConf.load(yaml).model[part], _convert_="all")


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Random values for every parameter, constants (norms, layer scale) included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim > 1:  # weights: keep activations of order one
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif name.endswith("gamma"):  # layer scale, initialized to 1e-6
                p.copy_(noise * 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * noise)
            else:
                p.copy_(0.2 * noise)


def _pair(part: str, ours: torch.nn.Module, seed: int):
    ref = _config(part)
    _randomize(ref, seed)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), ours.eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def attention_pair():
    return _pair("memory_attention", build_memory_attention(), seed=1)


@pytest.fixture(scope="module")
def encoder_pair():
    return _pair("memory_encoder", build_memory_encoder(), seed=2)


def _attention_inputs(side: int, frames: int, pointers: int, batch: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    n, m = side * side, frames * side * side + pointers
    curr, curr_pos = (torch.randn(n, batch, 256, generator=gen) for _ in range(2))
    memory, memory_pos = (torch.randn(m, batch, 64, generator=gen) for _ in range(2))
    return dict(curr=curr, memory=memory, curr_pos=curr_pos, memory_pos=memory_pos,
                num_obj_ptr_tokens=pointers)  # fmt: skip


def _compare_attention(ref, ours, side, frames, pointers, batch, seed=0) -> float:
    inputs = _attention_inputs(side, frames, pointers, batch, seed)
    with torch.no_grad():
        expected = ref(**inputs)
        # Meta takes curr as a one-item list in the model; both forms must work
        got = ours(**{**inputs, "curr": [inputs["curr"]], "curr_pos": [inputs["curr_pos"]]})
    diff = _max_diff(got, expected)
    assert diff <= TOL, (side, frames, pointers, batch, diff)
    return diff


def test_rope_helpers_match_meta():
    """Angle tables and rotations are bitwise Meta's, repeated keys and odd grids included."""
    pytest.importorskip("sam2")
    from sam2.modeling.position_encoding import apply_rotary_enc, compute_axial_cis

    gen = torch.Generator().manual_seed(0)
    for dim, (ex, ey) in [(256, (64, 64)), (32, (16, 8)), (64, (5.0, 5.0))]:
        cis = compute_axial_cis(dim=dim, end_x=ex, end_y=ey, theta=10000.0)
        angles = axial_rope_angles(dim, ex, ey, 10000.0)
        assert torch.equal(torch.polar(torch.ones_like(angles), angles), cis)
        attn = RoPEAttention(dim, 1, feat_sizes=(ex, ey))
        cos, sin = attn._rope_tables(angles.shape[0], torch.device("cpu"))
        assert torch.equal(cos, cis.real) and torch.equal(sin, cis.imag)
        n = angles.shape[0]
        q = torch.randn(2, 3, n, dim, generator=gen)
        k = torch.randn(2, 3, 4 * n, dim, generator=gen)
        q_ref, k_ref = apply_rotary_enc(q, k, freqs_cis=cis, repeat_freqs_k=True)
        assert torch.equal(apply_rope(q, cos, sin), q_ref)
        assert torch.equal(apply_rope(k, cos.repeat(4, 1), sin.repeat(4, 1)), k_ref)


@pytest.mark.parametrize("shape", [(64, 64), (32, 32), (16, 24), (1, 5)])
@pytest.mark.parametrize("args", [(64, 10000, True, None), (256, 10000, True, None),
                                  (128, 20, False, None), (32, 10000, True, 3.0)])  # fmt: skip
def test_position_encoding_matches_meta(shape, args):
    pytest.importorskip("sam2")
    from sam2.modeling.position_encoding import PositionEmbeddingSine as Ref

    x = torch.zeros(2, 3, *shape)
    expected = Ref(*args, warmup_cache=False)(x)
    ours = PositionEmbeddingSine(*args)
    assert _max_diff(ours(x), expected) <= 1e-6
    assert _max_diff(ours(x[:1]), expected[:1]) <= 1e-6  # cached
    assert not list(ours.state_dict())


def test_memory_attention_small_maps(attention_pair):
    """32x32 and 16x16 maps (angle tables rebuilt from the 64x64 ones), up to 4 frames."""
    pytest.importorskip("sam2")
    ref, ours = attention_pair
    diffs = [
        _compare_attention(ref, ours, side, frames, pointers, batch, seed)
        for seed, (side, frames, pointers, batch) in enumerate(
            [(32, 3, 16, 1), (32, 4, 0, 2), (16, 2, 4, 2), (32, 1, 16, 2), (16, 1, 0, 1)]
        )
    ]
    print("memory attention, small maps: max diffs", diffs)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("pointers", [0, 16])
def test_memory_attention_full_size(attention_pair, pointers, batch):
    """The real 64x64 map of a 1024 image against two memory frames (the cached tables)."""
    pytest.importorskip("sam2")
    ref, ours = attention_pair
    start = time.perf_counter()
    diff = _compare_attention(ref, ours, 64, 2, pointers, batch)
    print(f"memory attention 64x64, {pointers} pointers, batch {batch}: max diff {diff:.2e}, "
          f"{time.perf_counter() - start:.1f} s")  # fmt: skip


def test_rope_attention_odd_query_counts_as_meta():
    """A non-square query count still gets Meta's (fractional-position) table."""
    pytest.importorskip("sam2")
    from sam2.modeling.sam.transformer import RoPEAttention as Ref

    ref = Ref(32, 2, rope_k_repeat=True, feat_sizes=[4, 4])
    _randomize(ref, seed=5)
    ours = RoPEAttention(32, 2, rope_k_repeat=True, feat_sizes=(4, 4))
    ours.load_state_dict(ref.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(6)
    for n_q, n_k, excluded in [(12, 36, 0), (16, 35, 3), (12, 12, 0), (16, 16, 0)]:
        q, k = torch.randn(2, n_q, 32, generator=gen), torch.randn(2, n_k, 32, generator=gen)
        with torch.no_grad():
            expected = ref(q, k, k, num_k_exclude_rope=excluded)
            diff = _max_diff(ours(q, k, k, num_k_exclude_rope=excluded), expected)
        assert diff <= 1e-6, (n_q, n_k, excluded, diff)
        print(f"RoPE attention {n_q} queries, {n_k} keys, {excluded} excluded: {diff:.2e}")


def test_memory_attention_variants():
    """Other flags and widths than SAM 2.1's: heads, downsampling, position encodings."""
    pytest.importorskip("sam2")
    from sam2.modeling.memory_attention import MemoryAttention as RefMA
    from sam2.modeling.memory_attention import MemoryAttentionLayer as RefLayer
    from sam2.modeling.sam.transformer import RoPEAttention as RefRoPE

    def build(attn_cls, layer_cls, ma_cls):
        kw = dict(embedding_dim=64, num_heads=2, downsample_rate=2, dropout=0.1, feat_sizes=[8, 8])
        layer = layer_cls(
            activation="gelu", cross_attention=attn_cls(rope_k_repeat=True, kv_in_dim=32, **kw),
            d_model=64, dim_feedforward=96, dropout=0.1, pos_enc_at_attn=True,
            pos_enc_at_cross_attn_keys=False, pos_enc_at_cross_attn_queries=True,
            self_attention=attn_cls(**kw),
        )  # fmt: skip
        return ma_cls(d_model=64, pos_enc_at_input=False, layer=layer, num_layers=2)

    ref = build(RefRoPE, RefLayer, RefMA)
    _randomize(ref, seed=3)
    ours = build(RoPEAttention, MemoryAttentionLayer, MemoryAttention)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.eval(), ours.eval()
    gen = torch.Generator().manual_seed(4)
    for side, frames, pointers in [(8, 3, 5), (8, 1, 0), (4, 2, 2)]:
        n, m = side * side, frames * side * side + pointers
        curr, curr_pos = (torch.randn(n, 2, 64, generator=gen) for _ in range(2))
        memory, memory_pos = (torch.randn(m, 2, 32, generator=gen) for _ in range(2))
        inputs = dict(curr=curr, memory=memory, curr_pos=curr_pos, memory_pos=memory_pos,
                      num_obj_ptr_tokens=pointers)  # fmt: skip
        with torch.no_grad():
            diff = _max_diff(ours(**inputs), ref(**inputs))
        assert diff <= TOL, (side, frames, pointers, diff)
        print(f"memory attention variant {side}x{side}, {frames} frames, {pointers} pointers: "
              f"{diff:.2e}")  # fmt: skip


def test_rope_attention_rejects_what_meta_cannot_do():
    attn = RoPEAttention(32, 1, feat_sizes=(4, 4))
    with pytest.raises(ValueError):  # key count differs without rope_k_repeat
        attn(torch.zeros(1, 16, 32), torch.zeros(1, 32, 32), torch.zeros(1, 32, 32))
    attn = RoPEAttention(32, 1, rope_k_repeat=True, feat_sizes=(4, 4))
    with pytest.raises(ValueError):  # rotated keys not whole frames
        attn(torch.zeros(1, 16, 32), torch.zeros(1, 20, 32), torch.zeros(1, 20, 32))
    with pytest.raises(ValueError):  # no table of 2 positions: not a square map
        attn(torch.zeros(1, 2, 32), torch.zeros(1, 2, 32), torch.zeros(1, 2, 32))
    # all keys excluded: nothing to rotate
    out = attn(torch.zeros(1, 16, 32), torch.zeros(1, 3, 32), torch.zeros(1, 3, 32), 3)
    assert out.shape == (1, 16, 32)


@pytest.mark.parametrize("batch", [1, 2])
def test_memory_encoder_matches_meta(encoder_pair, batch):
    """64x64 features of a 1024 image with 1024x1024 masks, raw logits or pre-mapped."""
    pytest.importorskip("sam2")
    ref, ours = encoder_pair
    gen = torch.Generator().manual_seed(batch)
    pix_feat = torch.randn(batch, 256, 64, 64, generator=gen)
    logits = torch.randn(batch, 1, 1024, 1024, generator=gen) * 8
    for skip, masks in [(False, logits), (True, torch.sigmoid(logits) * 20 - 10)]:
        with torch.no_grad():
            expected = ref(pix_feat, masks, skip_mask_sigmoid=skip)
            got = ours(pix_feat, masks, skip_mask_sigmoid=skip)
        feats, ref_feats = got["vision_features"], expected["vision_features"]
        scale = ref_feats.abs().max().item()
        diff = _max_diff(feats, ref_feats)
        assert diff <= TOL * max(1.0, scale), (skip, diff, scale)  # measured: 0 (bitwise)
        assert len(got["vision_pos_enc"]) == 1
        assert _max_diff(got["vision_pos_enc"][0], expected["vision_pos_enc"][0]) <= 1e-6
        print(f"memory encoder batch {batch}, skip_mask_sigmoid {skip}: "
              f"max diff {diff:.2e} (output scale {scale:.1f})")  # fmt: skip
