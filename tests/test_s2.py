"""multiscale_forward against an independent, straightforward re-implementation of s2wrapper.forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from s2_policy.s2 import TilingPlan, get_plan, multiscale_forward, token_grid


def _hw(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def reference_forward(model, x, scales=None, img_sizes=None, max_split_size=None, resize_output_to_idx=0,
                      num_prefix_token=0, output_shape="bnc", split_forward=False, patch=None):
    """s2wrapper.forward written out plainly: per-scale loops, one model call per scale, torch.cat of tiles.

    Non-square tiles use the token grid (th // patch, tw // patch)."""
    b, c, h, w = x.shape
    sizes = [_hw(s) for s in img_sizes] if img_sizes else [(int(h * s), int(w * s)) for s in scales]
    msh, msw = _hw(max_split_size) if max_split_size else (h, w)
    splits = [(math.ceil(sh / msh), math.ceil(sw / msw)) for sh, sw in sizes]
    outs = []
    for (sh, sw), (nh, nw) in zip(sizes, splits, strict=True):
        xs = F.interpolate(x.to(torch.float32), size=(sh, sw), mode="bicubic").to(x.dtype)
        th, tw = sh // nh, sw // nw
        tiles = torch.cat([xs[:, :, i * th:(i + 1) * th, j * tw:(j + 1) * tw]
                           for i in range(nh) for j in range(nw)], dim=0)
        if split_forward:
            outs.append(torch.cat([model(t) for t in tiles.split(b)], dim=0))
        else:
            outs.append(model(tiles))
    prefixes = [o[:, :num_prefix_token] for o in outs]
    grids = []
    for o, (sh, sw), (nh, nw) in zip(outs, sizes, splits, strict=True):
        if output_shape == "bnc":
            o = o[:, num_prefix_token:]
            th, tw = sh // nh, sw // nw
            gh, gw = (int(o.shape[1] ** 0.5),) * 2 if th == tw else (th // patch, tw // patch)
            o = o.reshape(o.shape[0], gh, gw, o.shape[2]).permute(0, 3, 1, 2)
        rows = []
        for i in range(nh):
            rows.append(torch.cat([o[(i * nw + j) * b:(i * nw + j + 1) * b] for j in range(nw)], dim=-1))
        grids.append(torch.cat(rows, dim=-2))
    size = grids[resize_output_to_idx].shape[-2:]
    out = torch.cat([F.interpolate(g.to(torch.float32), size=tuple(size), mode="area").to(g.dtype)
                     for g in grids], dim=1)
    if output_shape == "bnc":
        out = out.reshape(out.shape[0], out.shape[1], -1).permute(0, 2, 1)
        if num_prefix_token > 0:
            pre = [torch.stack(p.split(b, dim=0), dim=0).mean(dim=0) for p in prefixes]
            out = torch.cat([torch.cat(pre, dim=-1), out], dim=1)
    return out


class ToyViT(torch.nn.Module):
    """Patchify + linear + nonlinearity, prefix tokens from a pooled projection: cheap but position-aware."""

    def __init__(self, patch=4, dim=8, n_prefix=1):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.patch, self.n_prefix = patch, n_prefix
        self.proj = torch.nn.Parameter(torch.randn(3 * patch * patch, dim, generator=g))
        self.pre = torch.nn.Parameter(torch.randn(max(n_prefix, 1), dim, dim, generator=g))
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        p = self.patch
        b, c, h, w = x.shape
        t = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        t = t.reshape(b, (h // p) * (w // p), -1)
        tok = torch.tanh(t @ self.proj) + torch.linspace(0, 1, t.shape[1])[None, :, None]
        pre = torch.einsum("bd,pde->bpe", tok.mean(1), self.pre[: self.n_prefix])
        return torch.cat([pre, tok], dim=1)


class ToyConv(torch.nn.Module):
    def forward(self, x):
        return F.avg_pool2d(torch.cat([x, x.square()], dim=1), 4)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(
    base=st.sampled_from([(8, 8), (8, 12), (12, 8), (16, 16)]),
    mults=st.lists(st.sampled_from([(1, 1), (2, 2), (3, 3), (1, 2), (2, 3)]), min_size=1, max_size=3),
    split_mode=st.sampled_from(["none", "base", "half"]),
    resize_idx=st.integers(0, 2),
    n_prefix=st.sampled_from([0, 1, 3]),
    split_forward=st.booleans(),
    batch=st.integers(1, 3),
    use_scales=st.booleans(),
)
def test_matches_reference_bnc(
    base, mults, split_mode, resize_idx, n_prefix, split_forward, batch, use_scales
):
    bh, bw = base
    square_mults = all(mh == mw for mh, mw in mults)
    model = ToyViT(patch=4, n_prefix=n_prefix)
    x = torch.rand(batch, 3, bh, bw)
    resize_idx = resize_idx % len(mults)
    if use_scales and square_mults:
        kw = {"scales": [m for m, _ in mults]}
    else:
        kw = {"img_sizes": [(bh * mh, bw * mw) for mh, mw in mults]}
    if split_mode == "base":
        kw["max_split_size"] = (bh, bw)
    elif split_mode == "half" and bh % 8 == 0 and bw % 8 == 0:
        kw["max_split_size"] = (bh // 2, bw // 2)
    args = dict(resize_output_to_idx=resize_idx, num_prefix_token=n_prefix, split_forward=split_forward, **kw)
    ours = multiscale_forward(model, x, **args)
    ref = reference_forward(model, x, patch=4, **args)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("img_sizes", [[16, 32], [16, 32, 48], [(16, 32), (32, 64)]])
@pytest.mark.parametrize("resize_idx", [0, 1, -1])
def test_matches_reference_bchw(img_sizes, resize_idx):
    x = torch.rand(2, 3, *_hw(img_sizes[0]))
    args = dict(img_sizes=img_sizes, max_split_size=16, resize_output_to_idx=resize_idx, output_shape="bchw")
    ours = multiscale_forward(ToyConv(), x, **args)
    ref = reference_forward(ToyConv(), x, **args)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_one_model_call_per_tile_size():
    model = ToyViT(patch=4, n_prefix=1)
    x = torch.rand(2, 3, 16, 16)
    multiscale_forward(model, x, img_sizes=[16, 32, 48], max_split_size=16, num_prefix_token=1)
    assert model.calls == [(2 * (1 + 4 + 9), 3, 16, 16)]
    model.calls.clear()
    # 24 -> one 24x24 tile, 32 -> 2x2 tiles of 16: two tile sizes, two calls
    multiscale_forward(model, x, img_sizes=[16, 24, 32], max_split_size=(24, 24), num_prefix_token=1)
    assert sorted(model.calls) == sorted([(2 * (1 + 4), 3, 16, 16), (2, 3, 24, 24)])


def test_tile_layout_and_plan_cache():
    plan = get_plan((4, 6), [(4, 6), (8, 12)], max_split_size=(4, 6))
    assert plan is get_plan((4, 6), [(4, 6), (8, 12)], max_split_size=(4, 6))
    assert plan.n_tiles == 5 and len(plan.groups) == 1
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 1, 4, 6)
    (tiles,) = plan.tile(x)
    assert tiles.shape == (2 * 5, 1, 4, 6)
    torch.testing.assert_close(tiles[:2], x)  # scale 0: the (bicubic, same-size) input itself
    big = F.interpolate(x, size=(8, 12), mode="bicubic")
    torch.testing.assert_close(tiles[2 + (1 * 2 + 0) * 2 + 1], big[1, :, 4:8, 0:6])  # tile (1, 0), image 1


def test_antialiased_scales_do_not_alias_fine_detail():
    """scale_antialias: a smaller scale is a low-passed resize; s2wrapper's plain bicubic folds detail finer
    than the smaller scale can hold (one-pixel lines every 3 px, like a 2-3 px part) into false structure."""
    x = torch.zeros(1, 1, 24, 24)
    x[..., ::3] = 1.0  # mean 1/3; period 3 px is above the 12 px scale's Nyquist limit (4 px)
    plain = TilingPlan.build((24, 24), [12, 24], max_split_size=12)
    smooth = TilingPlan.build((24, 24), [12, 24], max_split_size=12, antialias=True)
    assert not plain.antialias and smooth.antialias
    base_plain, base_smooth = plain.tile(x)[0][:1], smooth.tile(x)[0][:1]  # the 12 px scale's tile
    torch.testing.assert_close(base_smooth, F.interpolate(x, size=(12, 12), mode="bicubic", antialias=True))
    inner = (slice(None), slice(None), slice(None), slice(2, -2))  # away from the border's padding
    assert (base_smooth[inner] - 1 / 3).abs().max() < 0.15     # close to the average grey
    assert (base_plain[inner] - 1 / 3).abs().max() > 0.4       # plain bicubic: -0.19 .. 0.59, a false pattern
    torch.testing.assert_close(plain.tile(x)[0][1:], smooth.tile(x)[0][1:])  # the largest scale: the input


def test_non_square_token_grid():
    assert token_grid(64, (64, 64)) == (8, 8)
    assert token_grid(12, (48, 64)) == (3, 4)
    assert token_grid(8, (32, 64)) == (2, 4)
    with pytest.raises(ValueError, match="grid"):
        token_grid(10, (64, 64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"img_sizes": []}, "scale"),
        ({}, "scales"),
        ({"img_sizes": [16, 25], "max_split_size": 16}, "tiles"),
        ({"img_sizes": [16], "output_shape": "bchw", "num_prefix_token": 1}, "prefix"),
        ({"img_sizes": [16], "output_shape": "bhwc"}, "output_shape"),
        ({"img_sizes": [16, 32], "resize_output_to_idx": 2}, "resize_output_to_idx"),
        ({"img_sizes": [16], "num_prefix_token": 2}, "grid"),
        ({"img_sizes": [(16,)]}, "pair"),
    ],
)
def test_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kwargs = {"num_prefix_token": 1, **kwargs}
        multiscale_forward(ToyViT(patch=4, n_prefix=1), torch.rand(1, 3, 16, 16), **kwargs)


def test_wrong_rank_is_an_error():
    with pytest.raises(ValueError, match="B, C, H, W"):
        multiscale_forward(ToyViT(), torch.rand(3, 16, 16), scales=[1])
    with pytest.raises(ValueError, match="plan was built"):
        TilingPlan.build(16, [16]).tile(torch.rand(1, 3, 8, 8))
