"""MAE pre-training of in-domain MVP-style ViT encoders (``python -m s2_policy.pretrain``)."""

from s2_policy.pretrain.data import (
    FrameConfig,
    FrameSampler,
    load_or_render_frames,
    read_store_frames,
    render_frames,
)
from s2_policy.pretrain.mae import ARCHS, MAEConfig, MaskedAutoencoder, build_vit, get_2d_sincos_pos_embed
from s2_policy.pretrain.train import build_frame_config, export_encoder, run_pretraining, train_mae

__all__ = [
    "ARCHS",
    "FrameConfig",
    "FrameSampler",
    "MAEConfig",
    "MaskedAutoencoder",
    "build_frame_config",
    "build_vit",
    "export_encoder",
    "get_2d_sincos_pos_embed",
    "load_or_render_frames",
    "read_store_frames",
    "render_frames",
    "run_pretraining",
    "train_mae",
]
