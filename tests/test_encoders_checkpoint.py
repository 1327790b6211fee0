"""Checkpoint loading: MVP format, strictness, pickles, pos_embed resampling, builtin: paths."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from timm.models.vision_transformer import VisionTransformer

from s2_policy.encoders import EncoderConfig, build_encoder, fingerprint
from s2_policy.encoders import checkpoint as ckpt_mod
from s2_policy.jobs import common  # noqa: F401  (registers the schemas config.yaml composes with)

# MVP ViT-S geometry (12 heads!), shortened to 2 blocks to keep the test fast.
_VITS = dict(img_size=224, patch_size=16, embed_dim=384, depth=2, num_heads=12, qkv_bias=True,
             norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_classes=0)



@pytest.fixture(scope="module")
def reference() -> VisionTransformer:
    torch.manual_seed(123)
    model = VisionTransformer(**_VITS).eval()
    with torch.no_grad():  # non-trivial norm/bias values so a wrong head split shows in the features
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _mvp_state(reference: VisionTransformer, dtype=torch.float16) -> dict[str, torch.Tensor]:
    sd = {k: v.to(dtype) for k, v in reference.state_dict().items()}
    sd.update({  # MAE decoder leftovers that MVP files carry
        "mask_token": torch.zeros(1, 1, 256),
        "decoder_embed.weight": torch.zeros(256, 384),
        "decoder_blocks.0.norm1.weight": torch.ones(256),
        "decoder_pred.weight": torch.zeros(768, 256),
        "head.weight": torch.zeros(1000, 384),
    })
    return sd


def _cfg(path, **kw) -> EncoderConfig:
    return EncoderConfig(backbone="vits-mae-hoi", checkpoint=str(path), precision="fp32",
                         arch_kwargs={"depth": 2}, **kw)


def test_mvp_checkpoint_matches_timm_model(tmp_path, reference):
    path = tmp_path / "mae_pretrain_hoi_vit_small.pth"
    torch.save({"model": _mvp_state(reference)}, path)
    enc = build_encoder(_cfg(path))
    assert enc.identity()["checkpoint_path"] == str(path)
    x = torch.rand(2, 3, 224, 224)
    ref_model = VisionTransformer(**_VITS).eval()
    ref_model.load_state_dict({k: v.half().float() for k, v in reference.state_dict().items()})
    with torch.no_grad():
        expected = ref_model.forward_features(enc.preprocess(x))[:, 0]
    torch.testing.assert_close(enc(x), expected, rtol=0, atol=1e-5)
    # timm's own vit_small has 6 heads: same shapes, loads fine, but the features are wrong
    six = VisionTransformer(**{**_VITS, "num_heads": 6}).eval()
    six.load_state_dict(ref_model.state_dict())
    with torch.no_grad():
        assert (six.forward_features(enc.preprocess(x))[:, 0] - expected).abs().max() > 1e-2


@pytest.mark.parametrize("wrap", ["state_dict", "bare", "ddp"])
def test_other_layouts(tmp_path, reference, wrap):
    sd = _mvp_state(reference, torch.float32)
    obj = {"state_dict": sd} if wrap == "state_dict" else sd
    if wrap == "ddp":
        obj = {f"module.{k}": v for k, v in sd.items()}
    path = tmp_path / "x.pth"
    torch.save(obj, path)
    enc = build_encoder(_cfg(path))
    torch.testing.assert_close(enc.backbone.blocks[1].attn.qkv.weight, reference.blocks[1].attn.qkv.weight)


def test_truncated_checkpoint_names_missing_keys(tmp_path, reference):
    sd = {k: v for k, v in _mvp_state(reference).items() if not k.startswith("blocks.1.")}
    sd["blocks.0.extra.weight"] = torch.zeros(3)
    path = tmp_path / "truncated.pth"
    torch.save({"model": sd}, path)
    match = r"missing keys \[blocks\.1\..*unexpected keys \[blocks\.0\.extra\.weight"
    with pytest.raises(ValueError, match=match):
        build_encoder(_cfg(path))


def test_wrong_architecture_names_shape_mismatches(tmp_path, reference):
    path = tmp_path / "vits.pth"
    torch.save({"model": _mvp_state(reference)}, path)
    cfg = EncoderConfig(backbone="vitb-mae-egosoup", checkpoint=str(path), precision="fp32",
                        arch_kwargs={"depth": 2})
    match = r"shape mismatches \[blocks\.0\.attn\.proj\.bias: checkpoint \(384,\) vs model \(768,\)"
    with pytest.raises(ValueError, match=match):
        build_encoder(cfg)


def test_pickled_objects_need_opt_in(tmp_path, reference):
    path = tmp_path / "with_args.pth"
    torch.save({"model": _mvp_state(reference), "args": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(ValueError, match="trust_checkpoint=True"):
        build_encoder(_cfg(path))
    enc = build_encoder(_cfg(path, trust_checkpoint=True))
    assert enc.out_dim == 384


def test_pos_embed_of_other_grid_is_resampled(tmp_path, reference):
    small = VisionTransformer(**{**_VITS, "img_size": 112})
    sd = {k: v for k, v in reference.state_dict().items() if k != "pos_embed"}
    sd["pos_embed"] = small.pos_embed.detach().clone()
    path = tmp_path / "grid7.pth"
    torch.save({"model": sd}, path)
    with pytest.warns(UserWarning, match="resampling pos_embed from a 7x7 grid to 14x14"):
        enc = build_encoder(_cfg(path))
    assert enc.backbone.pos_embed.shape == reference.pos_embed.shape


def test_builtin_resolves_in_weights_dir(tmp_path, monkeypatch):
    from s2_policy.encoders.backbones import create_backbone

    sd = {k: v.half() for k, v in create_backbone("s2p-tiny").state_dict().items()}
    with torch.no_grad():
        sd["norm.bias"] += 0.5
    torch.save({"model": sd}, tmp_path / "s2p-tiny-test.pth")
    monkeypatch.setattr(ckpt_mod, "WEIGHTS_DIR", tmp_path)
    enc = build_encoder(backbone="s2p-tiny", checkpoint="builtin:s2p-tiny-test.pth", precision="fp32")
    assert enc.backbone.norm.bias.dtype == torch.float32
    torch.testing.assert_close(enc.backbone.norm.bias, sd["norm.bias"].float())
    assert fingerprint(enc) != fingerprint(build_encoder(backbone="s2p-tiny", precision="fp32"))
    with pytest.raises(FileNotFoundError, match="python -m s2_policy.pretrain"):
        build_encoder(EncoderConfig(backbone="s2p-tiny", checkpoint="builtin:absent.pth"))


SHIPPED = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "encoder").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_encoder_config_builds_with_its_shipped_weights(name):
    """``encoder=<name>`` composes and its builtin checkpoint loads strictly into the backbone it names."""
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"),
                               version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"encoder={name}", "s2=single",
                                                                "encoder.precision=fp32"])
    enc_cfg = EncoderConfig.from_dict({**OmegaConf.to_container(cfg.encoder, resolve=True),
                                       **OmegaConf.to_container(cfg.s2, resolve=True)})
    assert enc_cfg.checkpoint and enc_cfg.checkpoint.startswith("builtin:")
    enc = build_encoder(enc_cfg)
    shipped = torch.load(ckpt_mod.resolve_checkpoint(enc_cfg.checkpoint), weights_only=True)
    assert shipped["meta"]["arch"] == enc_cfg.backbone
    block = next(k for k in shipped["model"] if k.endswith("attn.qkv.weight"))
    loaded = dict(enc.backbone.named_parameters())
    assert torch.equal(loaded[block], shipped["model"][block].float())  # fp16 -> fp32 is exact


def test_metaworld_encoder_is_its_own_training_run():
    """The in-domain MetaWorld weights are not a copy of the project-task weights of the same architecture."""
    tiny = torch.load(ckpt_mod.resolve_checkpoint("builtin:s2p-tiny-mae.pth"), weights_only=True)
    mw = torch.load(ckpt_mod.resolve_checkpoint("builtin:s2p-tiny-mw-mae.pth"), weights_only=True)
    assert mw["meta"]["frame_sources"] and all("metaworld" in s for s in mw["meta"]["frame_sources"])
    assert not torch.equal(mw["model"]["blocks.0.attn.qkv.weight"], tiny["model"]["blocks.0.attn.qkv.weight"])
    mwv = torch.load(ckpt_mod.resolve_checkpoint("builtin:s2p-tiny-mwv-mae.pth"), weights_only=True)
    assert len(mwv["meta"]["frame_sources"]) == 24 and mwv["meta"]["scales"] == [1, 2]  # 24 tasks, S2-aware
    qkv = "blocks.0.attn.qkv.weight"
    assert not torch.equal(mwv["model"][qkv], tiny["model"][qkv])
    assert not torch.equal(mwv["model"][qkv], mw["model"][qkv])
