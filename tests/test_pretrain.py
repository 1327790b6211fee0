"""MAE pre-training: model maths, learning, resumable training, MVP-format export, frames, CLI."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from s2_policy.data.store import ReplayStore
from s2_policy.pretrain.data import (
    FrameConfig,
    FrameSampler,
    count_store_views,
    frame_views,
    load_or_render_frames,
    read_store_frames,
)
from s2_policy.pretrain.mae import MAEConfig, MaskedAutoencoder, build_vit, get_2d_sincos_pos_embed
from s2_policy.pretrain.train import STATE_FORMAT, build_frame_config, export_encoder, train_mae
from s2_policy.serialization import load_tree

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# A very small member of the family keeps every test fast; the export tests use the real s2p-tiny shape.
SMALL = MAEConfig(
    arch="s2p-tiny",
    arch_overrides={"embed_dim": 64, "depth": 2, "num_heads": 2},
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=2,
)


def _synthetic_frames(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """Images with structure an MAE can learn: a flat background and a coloured square at a random place."""
    rng = np.random.default_rng(seed)
    frames = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        frames[i] = rng.integers(60, 200, 3)
        x, y = rng.integers(0, size - 16, 2)
        frames[i, y : y + 16, x : x + 16] = rng.integers(0, 255, 3)
    return frames


def test_sincos_pos_embed_matches_mae_layout() -> None:
    emb = get_2d_sincos_pos_embed(16, 4, cls_token=True)
    assert emb.shape == (17, 16)
    assert np.all(emb[0] == 0)
    # patch (row 0, col 0): sin(0) = 0, cos(0) = 1 for both halves
    np.testing.assert_allclose(emb[1], [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4)
    # first half encodes the column: patches in the same column share it, rows differ in the second half
    grid = emb[1:].reshape(4, 4, 16)
    np.testing.assert_allclose(grid[0, 2, :8], grid[3, 2, :8])
    np.testing.assert_allclose(grid[2, 0, 8:], grid[2, 3, 8:])
    np.testing.assert_allclose(grid[1, 0, 8], np.sin(1.0))
    with pytest.raises(ValueError, match="divisible by 4"):
        get_2d_sincos_pos_embed(10, 4)


def test_patchify_roundtrip_and_masking() -> None:
    model = MaskedAutoencoder(SMALL)
    x = torch.randn(3, 3, 64, 64)
    patches = model.patchify(x)
    assert patches.shape == (3, 64, 8 * 8 * 3)
    torch.testing.assert_close(model.unpatchify(patches), x)
    torch.testing.assert_close(patches[0, 1].reshape(8, 8, 3), x[0, :, 0:8, 8:16].permute(1, 2, 0))
    kept, mask, ids_restore = model.random_masking(torch.randn(3, 64, 5), 0.75)
    assert kept.shape == (3, 16, 5)
    assert mask.sum(1).tolist() == [48.0] * 3
    assert model.encoder.pos_embed.requires_grad is False
    with pytest.raises(ValueError, match="expected images"):
        model.patchify(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedAutoencoder(MAEConfig(mask_ratio=1.0))
    with pytest.raises(ValueError, match="unknown MAE architecture"):
        build_vit("vit-huge")


def test_few_mae_steps_reduce_reconstruction_loss() -> None:
    torch.manual_seed(0)
    model = MaskedAutoencoder(SMALL)
    sampler = FrameSampler(_synthetic_frames(16), batch_size=16, crop_scale=(1.0, 1.0))
    imgs = sampler.sample()

    def eval_loss() -> float:
        with torch.no_grad():
            return model(imgs, generator=torch.Generator().manual_seed(123))[0].item()

    before = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(40):
        loss, _, _ = model(imgs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)


def _train(out: Path, crash_at: int | None = None) -> MaskedAutoencoder:
    torch.manual_seed(0)
    model = MaskedAutoencoder(SMALL)
    sampler = FrameSampler(_synthetic_frames(32), batch_size=8, seed=3)
    if crash_at is not None:
        calls = {"n": 0}
        sample = sampler.sample

        def crashing_sample() -> torch.Tensor:
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise KeyboardInterrupt
            return sample()

        sampler.sample = crashing_sample
    train_mae(
        model,
        sampler,
        out,
        steps=6,
        lr=1e-3,
        warmup_steps=2,
        amp=False,
        seed=5,
        ckpt_every=2,
        log_every=1,
        progress=False,
    )
    return model


def test_training_resumes_bit_exactly_after_a_crash(tmp_path: Path) -> None:
    reference = _train(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "crash", crash_at=4)  # dies during step 4: the state of step 2 is on disk
    state = load_tree(tmp_path / "crash" / "train_state.pt", STATE_FORMAT)
    assert state["step"] == 2
    resumed = _train(tmp_path / "crash")
    for (k, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    log = (tmp_path / "crash" / "loss.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log] == ["step", "1", "2", "3", "4", "5", "6"]
    with pytest.raises(ValueError, match="same train.steps"):
        train_mae(MaskedAutoencoder(SMALL), FrameSampler(_synthetic_frames(8), 4), tmp_path / "ref", steps=9)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_export_loads_strictly_with_identical_features(tmp_path: Path, dtype: str) -> None:
    torch.manual_seed(0)
    model = MaskedAutoencoder(MAEConfig(arch="s2p-tiny"))
    path = export_encoder(model, tmp_path / "enc.pth", dtype=dtype, meta={"steps": 0})
    obj = torch.load(path, map_location="cpu", weights_only=True)
    sd = obj["model"]
    assert not any(k.startswith(("decoder", "mask_token")) for k in sd)
    assert {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "blocks.5.attn.qkv.bias",
        "norm.weight",
    } <= set(sd)
    assert sd["pos_embed"].shape == (1, 65, 192)
    vit = build_vit("s2p-tiny")
    vit.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = model.encoder.forward_features(x), vit.forward_features(x)
    if dtype == "fp32":
        torch.testing.assert_close(theirs, ours, rtol=0, atol=0)
    else:
        torch.testing.assert_close(theirs, ours, rtol=0, atol=2e-2)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_export_through_the_project_mvp_loader_gives_identical_features(tmp_path: Path, pooling: str) -> None:
    from s2_policy.encoders import EncoderConfig, build_encoder

    torch.manual_seed(0)
    model = MaskedAutoencoder(MAEConfig(arch="s2p-tiny"))
    path = export_encoder(model, tmp_path / "enc.pth", dtype="fp32")
    enc = build_encoder(
        EncoderConfig(backbone="s2p-tiny", checkpoint=str(path), pooling=pooling, precision="fp32")
    )
    frames = _synthetic_frames(4)
    sampler = FrameSampler(frames, 4, normalize="imagenet")  # the encoder config's default normalisation
    with torch.no_grad():
        tokens = model.encoder.forward_features(sampler.to_tensor(frames))
        ours = tokens[:, 0] if pooling == "cls" else tokens[:, 1:].mean(1)
        theirs = enc(frames)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_frame_views_and_sampler() -> None:
    frame = np.arange(128 * 128 * 3, dtype=np.uint32).reshape(128, 128, 3).astype(np.uint8)
    views = frame_views(frame, 64, 4, np.random.default_rng(0))
    assert len(views) == 5 and all(v.shape == (64, 64, 3) for v in views)
    tiles = {v.tobytes() for v in views[1:]}
    quadrants = {frame[i : i + 64, j : j + 64].tobytes() for i in (0, 64) for j in (0, 64)}
    assert tiles == quadrants
    frames = _synthetic_frames(10)
    a = FrameSampler(frames, 4, seed=1).sample()
    b = FrameSampler(frames, 4, seed=1).sample()
    assert a.shape == (4, 3, 64, 64) and torch.equal(a, b)
    with pytest.raises(ValueError, match="batch_size"):
        FrameSampler(frames, 11)
    with pytest.raises(ValueError, match="normalize"):
        FrameSampler(frames, 2, normalize="clip")
    with pytest.raises(ValueError, match="multiple of out_size"):
        FrameConfig(render_size=100).validate()


def test_frame_views_cut_the_tiles_of_every_s2_scale() -> None:
    """``tile_scales=[2, 4]`` on a 256-px frame: the whole frame at 64 px, then 2 distinct tiles of the frame
    at 128 px (S2's 2x scale) and 2 of the frame itself (4x), exactly as S2 cuts them."""
    small = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    frame = small.repeat(4, 0).repeat(4, 1)  # area resizes of a 4x repeat are exact
    cfg = FrameConfig(render_size=256, tile_scales=[2, 4])
    cfg.validate()
    assert cfg.views_per_frame() == 5 and FrameConfig().views_per_frame() == 3
    views = frame_views(frame, 64, 2, np.random.default_rng(1), cfg.scales())
    assert len(views) == 5
    np.testing.assert_array_equal(views[0], small)
    at_2x = small.repeat(2, 0).repeat(2, 1)
    tiles_2x = [at_2x[i : i + 64, j : j + 64].tobytes() for i in (0, 64) for j in (0, 64)]
    tiles_4x = [frame[i : i + 64, j : j + 64].tobytes() for i in range(0, 256, 64) for j in range(0, 256, 64)]
    picked_2x = [tiles_2x.index(v.tobytes()) for v in views[1:3]]  # ValueError: not a 2x tile
    picked_4x = [tiles_4x.index(v.tobytes()) for v in views[3:5]]
    assert len(set(picked_2x)) == 2 and len(set(picked_4x)) == 2
    # the default (the render's own scale) draws exactly the tiles the one-scale recipe always drew
    one = frame_views(frame, 64, 2, np.random.default_rng(1))
    assert [v.tobytes() for v in one[1:]] == [v.tobytes() for v in
                                              frame_views(frame, 64, 2, np.random.default_rng(1), [4])[1:]]
    for bad in ([3], [1], [8], [2, 2]):
        with pytest.raises(ValueError, match="tile_scales"):
            FrameConfig(render_size=256, tile_scales=bad).validate()
    with pytest.raises(ValueError, match="tiles_per_frame"):
        FrameConfig(render_size=256, tile_scales=[2, 4], tiles_per_frame=5).validate()  # 2x has 4 tiles


@pytest.mark.slow
def test_frames_render_from_envs_and_cache(tmp_path: Path) -> None:
    pytest.importorskip("envs")
    cfg = FrameConfig(
        tasks=["s2_policy/PickCube-v0"],
        random_episodes=1,
        expert_episodes=1,
        max_steps=4,
        stride=2,
        tiles_per_frame=1,
    )
    frames = load_or_render_frames(cfg, tmp_path / "frames.npy", progress=False)
    # 2 episodes x 2 kept states x 2 cameras x (whole frame + 1 tile)
    assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
    assert frames.std() > 5  # real renders, not blank images
    again = load_or_render_frames(cfg, tmp_path / "frames.npy", progress=False)
    assert isinstance(again, np.memmap) and np.array_equal(frames, again)


@pytest.mark.slow
def test_cli_config_runs_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("envs")
    from hydra import compose, initialize_config_dir

    from s2_policy.pretrain.train import run_pretraining

    config_dir = CONFIG_DIR
    overrides = [
        f"out_dir={tmp_path}",
        f"data.cache={tmp_path}/frames.npy",
        "data.tasks=[s2_policy/PickCube-v0]",
        "data.random_episodes=1",
        "data.expert_episodes=1",
        "data.max_steps=6",
        "train.steps=3",
        "train.batch_size=4",
        "train.log_every=1",
        "train.threads=1",
        "figures.n_reconstructions=2",
        "+model.arch_overrides.embed_dim=64",
        "+model.arch_overrides.depth=1",
        "+model.arch_overrides.num_heads=2",
        "model.decoder_depth=1",
    ]
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=overrides)
    path = run_pretraining(cfg)
    obj = torch.load(path, weights_only=True)
    assert obj["model"]["pos_embed"].dtype == torch.float16 and obj["meta"]["steps"] == 3
    assert obj["meta"]["scales"] == [1, 2]  # whole frames and the 2x tiles of the 128-px renders
    assert (tmp_path / "mae_loss.png").stat().st_size > 0
    assert (tmp_path / "mae_reconstructions.png").stat().st_size > 0


@pytest.mark.parametrize(("arch", "dim"), [("s2p-nano", 128), ("s2p-tiny", 192)])
def test_shipped_checkpoint_is_mvp_format_and_loads_as_builtin(arch: str, dim: int) -> None:
    from s2_policy.encoders import EncoderConfig, build_encoder

    path = Path(__file__).resolve().parents[1] / "s2_policy" / "weights" / f"{arch}-mae.pth"
    assert path.stat().st_size <= 15 * 2**20
    obj = torch.load(path, map_location="cpu", weights_only=True)
    assert set(obj) == {"model", "meta"} and obj["meta"]["normalize"] == "imagenet"
    assert all(v.dtype == torch.float16 for v in obj["model"].values())
    vit = build_vit(arch)
    vit.load_state_dict({k: v.float() for k, v in obj["model"].items()}, strict=True)
    torch.testing.assert_close(
        vit.pos_embed[0], torch.from_numpy(get_2d_sincos_pos_embed(dim, 8, True)), atol=1e-3, rtol=0
    )
    enc = build_encoder(EncoderConfig(backbone=arch, checkpoint=f"builtin:{arch}-mae.pth", precision="fp32"))
    frames = _synthetic_frames(2)
    with torch.no_grad():
        ours = vit.forward_features(FrameSampler(frames, 2).to_tensor(frames))[:, 0]
        torch.testing.assert_close(enc(frames), ours, rtol=1e-5, atol=1e-5)


def test_amp_auto_follows_the_cpus_bf16_units(monkeypatch):
    from s2_policy.pretrain import train as pt

    monkeypatch.setattr(pt, "cpu_has_bf16", lambda: False)
    assert pt.resolve_amp("auto") is False and pt.resolve_amp(False) is False
    assert pt.resolve_amp(True) is True        # asked for explicitly: kept (with a warning)
    monkeypatch.setattr(pt, "cpu_has_bf16", lambda: True)
    assert pt.resolve_amp("auto") is True
    with pytest.raises(ValueError, match="auto, true or false"):
        pt.resolve_amp("yes")


# ------------------------------------------------------------------ frames from demonstration stores


def _write_frame_store(
    path: Path,
    lengths: list[int],
    cameras: tuple[str, ...] = ("front", "wrist"),
    size: int = 128,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A store (the project's writer) whose images are random ``size // 2`` images upsampled 2x by pixel
    repetition, so that the area resize to ``size // 2`` gives the small image back exactly; returns the small
    images per camera, indexed by store frame. Every frame, camera and quadrant differs."""
    rng = np.random.default_rng(seed)
    n, half = sum(lengths), size // 2
    small = {cam: rng.integers(0, 256, (n, half, half, 3), dtype=np.uint8) for cam in cameras}
    store = ReplayStore.create(path, attrs={"cameras": list(cameras)})
    start = 0
    for length in lengths:
        episode = {cam: small[cam][start : start + length].repeat(2, 1).repeat(2, 2) for cam in cameras}
        episode["action"] = np.zeros((length, 2), np.float32)
        store.add_episode(episode)
        start += length
    return small


def _append_episode(path: Path, length: int, cameras: tuple[str, ...] = ("front", "wrist")) -> None:
    store = ReplayStore.open(path, mode="a")
    episode = {cam: np.full((length, 128, 128, 3), 7, np.uint8) for cam in cameras}
    store.add_episode({**episode, "action": np.zeros((length, 2), np.float32)})


def _quadrants(image: np.ndarray, out: int = 64) -> list[bytes]:
    return [image[i : i + out, j : j + out].tobytes() for i in (0, out) for j in (0, out)]


def test_store_frames_are_the_s2_views_of_every_stride_th_frame(tmp_path: Path) -> None:
    a = _write_frame_store(tmp_path / "a.zarr", [5, 3], seed=0)
    b = _write_frame_store(tmp_path / "b.zarr", [4], seed=1)
    cameras = ["front", "wrist"]
    cfg = FrameConfig(stores=[str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")], cameras=cameras, stride=2)
    frames = read_store_frames(cfg, progress=False)
    # every 2nd frame counted from each episode's start: ceil(5/2) + ceil(3/2) + ceil(4/2) = 7 kept frames
    kept = [(a, 0), (a, 2), (a, 4), (a, 5), (a, 7), (b, 0), (b, 2)]
    assert frames.shape == (7 * 2 * 3, 64, 64, 3) and frames.dtype == np.uint8  # x cameras x (1 + 2 tiles)
    assert count_store_views(cfg) == len(frames)
    assert count_store_views(replace(cfg, tiles_per_frame=0, stride=1)) == 12 * 2
    picked = []
    for k, (small, t) in enumerate(kept):
        for c, cam in enumerate(cameras):
            views = frames[(k * 2 + c) * 3 : (k * 2 + c + 1) * 3]
            np.testing.assert_array_equal(views[0], small[cam][t])  # base scale: the whole frame resized
            quadrants = _quadrants(small[cam][t].repeat(2, 0).repeat(2, 1))
            tiles = [quadrants.index(v.tobytes()) for v in views[1:]]  # ValueError: not a tile of this frame
            assert tiles[0] != tiles[1]
            picked.append(tuple(tiles))
    assert len(set(picked)) > 1  # the tiles are drawn, not always the same two


def test_store_frames_cache_key_follows_stores_content_and_settings(tmp_path: Path) -> None:
    _write_frame_store(tmp_path / "a.zarr", [3, 2], seed=0)
    _write_frame_store(tmp_path / "b.zarr", [2], seed=1)
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    cfg = FrameConfig(stores=[a], cameras=["front"], stride=2)
    keys = [
        cfg.key(),
        replace(cfg, stores=[a, b]).key(),
        replace(cfg, stores=[b, a]).key(),
        replace(cfg, stride=3).key(),
        replace(cfg, tiles_per_frame=1).key(),
        replace(cfg, cameras=["wrist"]).key(),
        replace(cfg, seed=1).key(),
        replace(cfg, tile_scales=[2]).key(),  # named explicitly: a new key (the cache is remade once)
    ]
    assert len(set(keys)) == len(keys)
    assert replace(cfg, tasks=["other"], max_steps=7).key() == keys[0]  # rollout settings do not apply
    cache = tmp_path / "frames.npy"
    frames = load_or_render_frames(cfg, cache, progress=False)
    assert isinstance(frames, np.memmap) and len(frames) == (2 + 1) * 3
    np.testing.assert_array_equal(frames, read_store_frames(cfg, progress=False))
    mtime = cache.stat().st_mtime_ns
    assert load_or_render_frames(cfg, cache, progress=False).shape == frames.shape
    assert cache.stat().st_mtime_ns == mtime  # same key: the cache is reused, not rebuilt
    _append_episode(tmp_path / "a.zarr", 4)
    assert cfg.key() != keys[0]  # new content, same path and settings
    assert len(load_or_render_frames(cfg, cache, progress=False)) == (2 + 1 + 2) * 3  # rebuilt


def test_store_patterns_expand_to_the_sorted_matching_stores(tmp_path: Path) -> None:
    for name, seed in (("b.zarr", 1), ("a.zarr", 0), ("c.other", 2)):
        _write_frame_store(tmp_path / name, [2], cameras=("front",), seed=seed)
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    pattern = FrameConfig(stores=[b, str(tmp_path / "*.zarr")], cameras=["front"], stride=1)
    assert pattern.store_paths() == [b, a]  # listed order, then sorted matches; each store once
    explicit = replace(pattern, stores=[b, a])
    assert pattern.key() == explicit.key()
    np.testing.assert_array_equal(read_store_frames(pattern, progress=False),
                                  read_store_frames(explicit, progress=False))
    with pytest.raises(FileNotFoundError, match=r"pattern '.*\*\.hdf5' matches nothing"):
        replace(pattern, stores=[str(tmp_path / "*.hdf5")]).key()


def test_rendered_frames_keep_their_cache_key() -> None:
    """The new ``stores`` field, left empty, does not change the key of rendered frames: caches made before
    it existed stay valid (the key of the shipped s2p-tiny frames, docs/pretrain.md)."""
    from omegaconf import OmegaConf

    cfg = build_frame_config(OmegaConf.load(CONFIG_DIR / "pretrain.yaml").data)
    assert cfg.stores == [] and cfg.key() == "461791819a80cc9f"


def test_store_frames_refuse_missing_cameras_wrong_sizes_and_paths(tmp_path: Path) -> None:
    path = tmp_path / "front_only.zarr"
    _write_frame_store(path, [2], cameras=("front",))
    cfg = FrameConfig(stores=[str(path)], cameras=["front", "side"])
    msg = f"store {path} has no camera 'side' (data.cameras = ['front', 'side']); its cameras are ['front']"
    with pytest.raises(ValueError, match=re.escape(msg)):
        cfg.key()
    with pytest.raises(ValueError, match=re.escape(msg)):
        read_store_frames(cfg, progress=False)
    _write_frame_store(tmp_path / "px96.zarr", [2], cameras=("front",), size=96)
    px96 = FrameConfig(stores=[str(tmp_path / "px96.zarr")], cameras=["front"])
    with pytest.raises(ValueError, match=r"shape \(96, 96, 3\).*render_size = 128.*convert the store"):
        read_store_frames(px96, progress=False)
    _write_frame_store(tmp_path / "px256.zarr", [1], cameras=("front",), size=256)
    with pytest.raises(ValueError, match=r"set data.render_size=256"):
        FrameConfig(stores=[str(tmp_path / "px256.zarr")], cameras=["front"]).key()
    ReplayStore.create(tmp_path / "empty.zarr", attrs={"cameras": ["front"]})
    with pytest.raises(ValueError, match="empty.zarr holds no complete episode"):
        FrameConfig(stores=[str(path), str(tmp_path / "empty.zarr")], cameras=["front"]).key()
    with pytest.raises(FileNotFoundError, match="data.stores lists .*missing.zarr"):
        FrameConfig(stores=[str(tmp_path / "missing.zarr")], cameras=["front"]).key()


def test_pretrain_config_takes_stores_from_the_command_line(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    _write_frame_store(tmp_path / "s.zarr", [4], cameras=("corner4",))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        default = compose(config_name="pretrain")
        overrides = [f"data.stores=[{tmp_path}/s.zarr]", "data.cameras=[corner4]"]
        cfg = compose(config_name="pretrain", overrides=overrides)
    assert build_frame_config(default.data).stores == []
    frame_cfg = build_frame_config(cfg.data)
    assert frame_cfg.stores == [f"{tmp_path}/s.zarr"] and frame_cfg.cameras == ["corner4"]
    # the yaml's settings: every 3rd frame of the 4 (2 kept), 1 camera, the whole frame + 2 tiles
    assert read_store_frames(frame_cfg, progress=False).shape == (2 * 3, 64, 64, 3)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        scaled = compose(config_name="pretrain", overrides=[*overrides, "data.tile_scales=[2]"])
    scaled_cfg = build_frame_config(scaled.data)
    assert scaled_cfg.tile_scales == [2] and scaled_cfg.key() != frame_cfg.key()  # a plain list, in the key
