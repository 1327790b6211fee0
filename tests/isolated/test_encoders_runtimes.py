"""Deployment runtimes: the exported whole-encoder graph against the PyTorch encoder, precisions, the graph
cache (reuse, invalidation, damage) and the fingerprint rule. Skipped without the ``deploy`` extra."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from s2_policy.data.feature_cache import ensure_feature_cache
from s2_policy.data.store import ReplayStore
from s2_policy.encoders import EncoderConfig, build_encoder, fingerprint
from s2_policy.encoders.precision import cpu_has_bf16, cpu_has_vnni
from s2_policy.encoders.runtimes import encoder as runtime_encoder
from s2_policy.encoders.runtimes import synthetic_frames

DEPLOY = ("onnx", "onnxscript", "onnxruntime", "openvino", "nncf")
missing = [m for m in DEPLOY if importlib.util.find_spec(m) is None]
needs_deploy = pytest.mark.skipif(bool(missing), reason=f"deploy extra not installed (missing {missing})")

NANO = {"backbone": "s2p-nano", "checkpoint": "builtin:s2p-nano-mae.pth"}


def frames(seed: int, b: int, h: int, w: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, h, w, 3), dtype=np.uint8))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(2).double(), b.flatten(2).double(), dim=-1)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runtime_graphs")


def test_config_rejects_unknown_runtime() -> None:
    with pytest.raises(ValueError, match="runtime='tflite' is not one of"):
        EncoderConfig(runtime="tflite")


@needs_deploy
def test_unsupported_choices_raise_clear_errors(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="use runtime=openvino for bf16"):
        build_encoder(EncoderConfig(**NANO, runtime="onnxruntime", precision="bf16"))
    with pytest.raises(ValueError, match="needs calibration frames"):
        build_encoder(EncoderConfig(**NANO, runtime="openvino", precision="int8",
                                    runtime_cache_dir=str(cache_dir)))
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(ImportError, match=r"pip install -e '\.\[deploy\]'"):
            build_encoder(EncoderConfig(**NANO, runtime="tensorrt"))


@needs_deploy
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_fp32_graph_matches_torch_with_non_square_tiling(runtime: str, cache_dir: Path) -> None:
    """S2 sizes 64x128 and 128x256 (1x2 and 2x4 tiles), cameras of other shapes (crop, antialiased
    up- and downsampling), cls+mean pooling (stitching and area pooling); the batch size is free."""
    cfg = {**NANO, "img_sizes": [[64, 128], [128, 256]], "pooling": "cls+mean", "precision": "fp32"}
    ref = build_encoder(EncoderConfig(**cfg))
    enc = build_encoder(EncoderConfig(**cfg, runtime=runtime, runtime_cache_dir=str(cache_dir)))
    assert [s.splits for s in ref.plan.scales] == [(1, 2), (2, 4)]
    for b in (3, 1):
        cams = [frames(b, b, 64, 128), frames(b + 10, b, 100, 150), frames(b + 20, b, 300, 500)]
        want, got = ref.encode_cameras(cams), enc.encode_cameras(cams)
        assert got.shape == want.shape == (b, 3, ref.out_dim)
        assert ((got - want).abs().max() / want.abs().max()).item() < 1e-4
    # a single batch through forward() keeps the S2Encoder contract
    one = frames(5, 2, 64, 128)
    assert torch.allclose(enc(one), ref(one), rtol=1e-4, atol=1e-4 * ref(one).abs().max().item())
    with pytest.raises(ValueError, match="runtime graphs take uint8"):
        enc.encode_cameras([one.float()])


@needs_deploy
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_antialiased_scales_export_exactly(runtime: str, cache_dir: Path) -> None:
    """scale_antialias: the smaller scale's antialiased bicubic resize runs in the graph as torch runs it
    (OpenVINO's own antialiased Resize alone gave cosine 0.984 to torch)."""
    cfg = {**NANO, "scales": [1, 2], "pooling": "tokens", "precision": "fp32", "scale_antialias": True}
    ref = build_encoder(EncoderConfig(**cfg))
    enc = build_encoder(EncoderConfig(**cfg, runtime=runtime, runtime_cache_dir=str(cache_dir)))
    cams = [frames(7, 2, 128, 128)]
    want, got = ref.encode_cameras(cams), enc.encode_cameras(cams)
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-4
    assert enc.fingerprint() == ref.fingerprint()


@needs_deploy
def test_openvino_compiles_each_batch_size_static_and_keeps_the_recent_ones(cache_dir: Path) -> None:
    """One static-shape compilation per batch size (the most recently used ``max_compiled`` kept); a frame's
    features do not depend on the batch it came in."""
    enc = build_encoder(EncoderConfig(**NANO, scales=[1, 2], precision="fp32", runtime="openvino",
                                      runtime_cache_dir=str(cache_dir)))
    cams = [frames(1, 3, 64, 64), frames(2, 3, 80, 80)]
    session = enc.session(((64, 64), (80, 80)))
    session.max_compiled = 2
    full = enc.encode_cameras(cams)
    for b in (1, 2, 1):
        got = enc.encode_cameras([c[:b] for c in cams])
        torch.testing.assert_close(got, full[:b], rtol=1e-5, atol=1e-5 * full.abs().max().item())
    assert list(session._requests) == [2, 1]  # 3 evicted first; 1 used last
    shapes = [r.model_inputs[0].get_partial_shape() for r in session._requests.values()]
    assert all(s.is_static for s in shapes) and [s[0].get_length() for s in shapes] == [2, 1]


@needs_deploy
def test_openvino_bf16_and_int8_agree_with_fp32_on_mae_weights(cache_dir: Path, tmp_path: Path) -> None:
    """Shipped MAE s2p-nano, S2 [64, 128]: bf16 and int8 (NNCF, calibrated on a store's frames) at mean
    cosine >= 0.999 to PyTorch fp32 on frames the calibration did not see (int8's worst frame: ~0.9988); on
    a CPU without VNNI int8 may fall just below, and then must not share the torch fingerprint."""
    rng = np.random.default_rng(0)
    store = ReplayStore.create(tmp_path / "calib.zarr", attrs={"cameras": ["front"]})
    store.add_episode({"front": synthetic_frames(32, (96, 96), seed=7),
                       "state": rng.normal(size=(32, 2)).astype(np.float32)})
    ref = build_encoder(EncoderConfig(**NANO, scales=[1, 2], precision="fp32"))
    cams = [torch.from_numpy(synthetic_frames(4, (96, 96), seed=s)) for s in (1, 2)]
    want = ref.encode_cameras(cams)
    for precision in ("bf16", "int8"):
        enc = build_encoder(EncoderConfig(
            **NANO, scales=[1, 2], runtime="openvino", precision=precision, runtime_cache_dir=str(cache_dir),
            runtime_calibration=str(tmp_path / "calib.zarr"), runtime_calibration_frames=32,
        ))
        got = enc.encode_cameras(cams)
        cos = cosine(got, want)
        # int8 without VNNI (AVX2 only): 7-bit weights against overflow, measured mean 0.9989 (0.9944 before)
        floor = 0.999 if precision == "bf16" or cpu_has_vnni() else 0.998
        assert cos.mean().item() >= floor, (precision, cos)
        assert cos.min().item() >= (0.9995 if precision == "bf16" else 0.998), (precision, cos)
        if precision == "int8" or cpu_has_bf16():  # without bf16 units OpenVINO computes bf16 in fp32
            assert cos.min().item() < 1 - 1e-7, "bf16/int8 features equal fp32's: was the precision applied?"
        if floor == 0.999:
            assert enc.graph_meta(((96, 96), (96, 96)))["agreement"]["cosine_mean"] >= 0.999
        # the sharing rule (measured at the encoder's input size): torch's fingerprint only at mean cosine
        # >= 0.999, else one of its own
        agreement = enc.agreement()["cosine_mean"]
        assert (fingerprint(enc) == fingerprint(ref)) == (agreement >= 0.999), (precision, agreement)


@needs_deploy
def test_graph_cache_reuse_invalidation_and_damage(cache_dir: Path, monkeypatch, caplog) -> None:
    exports = []
    real_export = runtime_encoder.export_onnx
    monkeypatch.setattr(runtime_encoder, "export_onnx", lambda *a: (exports.append(a[1]), real_export(*a)))
    cfg = EncoderConfig(**NANO, precision="fp32", runtime="openvino", runtime_cache_dir=str(cache_dir))
    cams = [frames(0, 2, 72, 72)]
    first = build_encoder(cfg).encode_cameras(cams)
    assert exports == [((72, 72),)]
    second_enc = build_encoder(cfg)
    assert torch.equal(second_enc.encode_cameras(cams), first)
    assert len(exports) == 1, "a second build must reuse the cached graph"

    # other weights -> other fingerprint -> another export
    random_weights = build_encoder(EncoderConfig.from_dict(cfg.to_dict(), checkpoint=None))
    assert random_weights.reference.fingerprint() != second_enc.reference.fingerprint()
    random_weights.encode_cameras(cams)
    assert len(exports) == 2

    # damage the cached graph: detected by its digest, removed and rebuilt (from the cached ONNX export)
    entry = Path(second_enc.graph_meta(((72, 72),))["path"])
    data = next(p for p in entry.iterdir() if p.name.endswith(".data"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        rebuilt = build_encoder(cfg).encode_cameras(cams)
    assert "damaged" in caplog.text
    assert torch.equal(rebuilt, first)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["agreement"]["cosine_mean"] > 0.99999
    # a truncated meta.json (e.g. a copy interrupted) is also rebuilt, not trusted
    (entry / "meta.json").write_text("{")
    assert torch.equal(build_encoder(cfg).encode_cameras(cams), first)
    assert len(exports) == 2


@needs_deploy
def test_fingerprint_shared_only_at_agreement(cache_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Agreeing features share the PyTorch fingerprint, hence its feature cache; features below the cosine
    threshold get their own fingerprint and cache."""
    cfg = EncoderConfig(**NANO, scales=[1, 2], precision="fp32")
    ref = build_encoder(cfg)
    enc = build_encoder(cfg, runtime="onnxruntime", runtime_cache_dir=str(cache_dir))
    assert fingerprint(enc) == enc.fingerprint() == fingerprint(ref)
    assert enc.identity()["fingerprint"] == ref.identity()["fingerprint"]

    rng = np.random.default_rng(1)
    store = ReplayStore.create(tmp_path / "s.zarr", attrs={"cameras": ["front"]})
    store.add_episode({"front": rng.integers(0, 256, (5, 128, 128, 3), dtype=np.uint8),
                       "state": rng.normal(size=(5, 2)).astype(np.float32)})
    ours = ensure_feature_cache(store.path, enc, ["front"], batch_size=4, progress=False)
    theirs = ensure_feature_cache(store.path, ref, ["front"], batch_size=4, progress=False)
    assert ours.path == theirs.path  # one shared cache, computed once

    monkeypatch.setattr(runtime_encoder, "AGREEMENT_COSINE", 1.5)  # nothing agrees: own fingerprint
    strict = build_encoder(cfg, runtime="onnxruntime", runtime_cache_dir=str(cache_dir))
    assert fingerprint(strict) != fingerprint(ref)
    own = ensure_feature_cache(store.path, strict, ["front"], batch_size=4, progress=False)
    assert own.path != theirs.path
    np.testing.assert_allclose(own.get("front"), theirs.get("front"), rtol=1e-4, atol=1e-4)
