"""Typed policy configuration: one dataclass per head and one for the policy, with the only set of defaults.

``configs/policy/*.yaml`` list ``schema`` (this dataclass, registered with hydra) in their defaults, so a
wrong key or type fails when hydra composes the config; :meth:`PolicyConfig.from_dict` does the same checks
for mappings from code and checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

HEADS = ("mlp", "diffusion", "transformer")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")  # diffusers' DDIMScheduler timestep_spacing
NORMALIZER_MODES = ("limits", "gaussian")
INPAINT_MODES = ("none", "executed", "plan")  # DiffusionHeadConfig.inpaint


@dataclass
class ChunkExecutionConfig:
    """How a head's action chunks are executed, shared by every head: whole chunks of ``n_action_steps``
    (``temporal_ensemble: false``), or ACT's temporal ensembling: query the policy every control step and
    execute the weighted mean of every prediction made for that step (each query contributes its
    ``n_action_steps`` actions), weights ``exp(-temporal_ensemble_m * i)``, ``i = 0`` the oldest."""

    temporal_ensemble: bool = False
    temporal_ensemble_m: float = 0.01

    def __post_init__(self) -> None:
        if self.temporal_ensemble_m < 0:
            raise ValueError(f"policy.<head>.temporal_ensemble_m must be >= 0, got "
                             f"{self.temporal_ensemble_m}")


@dataclass
class MLPHeadConfig(ChunkExecutionConfig):
    """MLP head: ``n_layers`` hidden layers of ``hidden_dim`` (GELU), ``loss`` ``l2`` | ``l1``; chunk
    execution as :class:`ChunkExecutionConfig` (whole chunks by default)."""

    hidden_dim: int = 512
    n_layers: int = 3
    dropout: float = 0.0
    loss: str = "l2"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in ("l2", "l1"):
            raise ValueError(f"policy.mlp.loss={self.loss!r} is unknown; use 'l2' or 'l1'")


@dataclass
class DiffusionHeadConfig(ChunkExecutionConfig):
    """Diffusion head: FiLM-conditioned 1-D U-Net; DDPM training (``num_train_timesteps`` noise levels),
    DDIM sampling with ``num_inference_steps`` at ``timestep_spacing`` (``trailing`` starts sampling at the
    last noise level, where the training noise is pure; ``leading`` starts below it). ``num_samples`` > 1
    samples that many chunks per query (one batched denoising) and executes their mean, which removes the
    sampling spread at that multiple of the head's inference cost. ``inpaint`` ties each new chunk to the
    previous one of the same episode in rollouts (an inference setting; see :meth:`DiffusionHead.predict`):
    ``executed`` inpaints the actions already executed that the new chunk covers, ``plan`` also the previous
    chunk's unexecuted plan with weights falling linearly to 0 across the overlap, ``none`` samples every
    chunk on its own. ``down_dims`` is small for CPU training (Diffusion Policy uses [256, 512, 1024] on a
    GPU). Chunk execution as :class:`ChunkExecutionConfig`."""

    down_dims: list[int] = field(default_factory=lambda: [32, 64, 128])
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 128
    num_train_timesteps: int = 100
    num_inference_steps: int = 5
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "sample"
    clip_sample: bool = True
    timestep_spacing: str = "trailing"
    num_samples: int = 1
    inpaint: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inpaint not in INPAINT_MODES:
            raise ValueError(f"policy.diffusion.inpaint={self.inpaint!r}; use one of {INPAINT_MODES}")
        if self.num_samples < 1:
            raise ValueError(f"policy.diffusion.num_samples must be >= 1 (chunks sampled and averaged per "
                             f"query), got {self.num_samples}")
        if self.prediction_type not in ("epsilon", "sample"):
            raise ValueError(f"policy.diffusion.prediction_type={self.prediction_type!r}; use 'epsilon' or "
                             "'sample'")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"policy.diffusion.timestep_spacing={self.timestep_spacing!r}; use one of "
                             f"{TIMESTEP_SPACINGS}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"policy.diffusion.num_inference_steps must be in [1, num_train_timesteps="
                             f"{self.num_train_timesteps}], got {self.num_inference_steps}")


@dataclass
class TransformerHeadConfig(ChunkExecutionConfig):
    """ACT-style transformer head (Zhao et al. 2023): ``horizon`` learned action queries cross-attend to one
    token per S2 feature token of every camera and observation step, plus one proprio token per step.

    Args:
        d_model, n_heads, dim_feedforward, dropout: sizes of torch's ``nn.Transformer*Layer`` (pre-norm,
            GELU).
        n_encoder_layers: self-attention layers over the observation tokens before the decoder (0: none).
        n_decoder_layers: decoder layers (query self-attention + cross-attention to the observation tokens).
        readout_dim: channels per feature token of the readout token (one per step: every camera's grid,
            flattened and projected to ``d_model``; it also starts every query); 0: none (attention alone).
        loss: ``l2`` | ``l1`` (ACT's) on the normalised chunk.
        use_vae: ACT's conditional VAE: a transformer encoder reads [CLS, proprio, action chunk] into a
            ``latent_dim`` Gaussian (training only); the decoder sees the sample as one more token, and the
            prior mean (zeros) at inference. ``kl_weight`` scales the KL term (ACT: 10).
        n_vae_encoder_layers: layers of that encoder.
        temporal_ensemble, temporal_ensemble_m: :class:`ChunkExecutionConfig`; on by default for this head
            (ACT's temporal ensembling).
    """

    d_model: int = 128
    n_heads: int = 4
    dim_feedforward: int = 512
    n_encoder_layers: int = 0
    n_decoder_layers: int = 2
    readout_dim: int = 128
    dropout: float = 0.1
    loss: str = "l2"
    use_vae: bool = False
    latent_dim: int = 32
    kl_weight: float = 10.0
    n_vae_encoder_layers: int = 1
    temporal_ensemble: bool = True   # this head's default (the others execute whole chunks)

    def __post_init__(self) -> None:
        super().__post_init__()
        p = "policy.transformer"
        if self.loss not in ("l1", "l2"):
            raise ValueError(f"{p}.loss={self.loss!r} is unknown; use 'l1' or 'l2'")
        if min(self.d_model, self.n_heads, self.dim_feedforward, self.n_decoder_layers, self.latent_dim) < 1:
            raise ValueError(f"{p}: d_model, n_heads, dim_feedforward, n_decoder_layers and latent_dim "
                             f"must be >= 1, got {self.d_model}, {self.n_heads}, {self.dim_feedforward}, "
                             f"{self.n_decoder_layers}, {self.latent_dim}")
        if self.d_model % self.n_heads:
            raise ValueError(f"{p}.d_model={self.d_model} must be divisible by n_heads={self.n_heads}; "
                             "change one of them")
        if min(self.n_encoder_layers, self.n_vae_encoder_layers, self.readout_dim) < 0:
            raise ValueError(f"{p}.n_encoder_layers, n_vae_encoder_layers and readout_dim must be >= 0, got "
                             f"{self.n_encoder_layers}, {self.n_vae_encoder_layers}, {self.readout_dim}")
        if self.use_vae and self.n_vae_encoder_layers < 1:
            raise ValueError(f"{p}.use_vae=true needs n_vae_encoder_layers >= 1 (ACT's CVAE encoder); set it "
                             "or use_vae=false")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{p}.dropout must be in [0, 1), got {self.dropout}")
        if self.kl_weight < 0:
            raise ValueError(f"{p}.kl_weight must be >= 0, got {self.kl_weight}")


@dataclass
class PolicyConfig:
    """Behaviour-cloning policy over S2 features and proprio state.

    Args:
        head: ``mlp``, ``diffusion`` or ``transformer``.
        horizon: predicted action chunk length (starts at the first observation step).
        n_obs_steps: observation history (features of all cameras + state per step).
        n_action_steps: actions executed per policy call
            (``1 <= n_action_steps <= horizon - n_obs_steps + 1``); with a head's ``temporal_ensemble`` the
            policy runs every step and this many predictions are averaged.
        normalizer_mode: ``limits`` ([-1, 1]) or ``gaussian``.
        obs_proj_dim: linear projection of the concatenated camera features (0: none).
        token_proj_dim: per-token projection of token features (``encoder.pooling=tokens``).
        obs_proj_dim and token_proj_dim are unused by the transformer head (it projects every token to its
        ``d_model``).
        use_state: feed the proprio state to the head (``false``: camera features only, so the head cannot
            steer by where the hand was in the demonstrations; the mlp and diffusion heads).
        mlp, diffusion, transformer: the heads' settings (only the chosen head's block is used).
    """

    head: str = "mlp"
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    normalizer_mode: str = "limits"
    obs_proj_dim: int = 256
    token_proj_dim: int = 16
    use_state: bool = True
    mlp: MLPHeadConfig = field(default_factory=MLPHeadConfig)
    diffusion: DiffusionHeadConfig = field(default_factory=DiffusionHeadConfig)
    transformer: TransformerHeadConfig = field(default_factory=TransformerHeadConfig)

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"policy.head={self.head!r} is unknown; use one of {HEADS}")
        if self.normalizer_mode not in NORMALIZER_MODES:
            raise ValueError(f"policy.normalizer_mode={self.normalizer_mode!r} is not one of "
                             f"{NORMALIZER_MODES}")
        if min(self.horizon, self.n_obs_steps) < 1:
            raise ValueError(f"policy.horizon and policy.n_obs_steps must be >= 1, got {self.horizon}, "
                             f"{self.n_obs_steps}")
        if not 1 <= self.n_action_steps <= self.horizon - self.n_obs_steps + 1:
            raise ValueError(f"need 1 <= n_action_steps <= horizon - n_obs_steps + 1, got n_action_steps="
                             f"{self.n_action_steps}, horizon={self.horizon}, n_obs_steps={self.n_obs_steps}")
        if self.obs_proj_dim < 0 or self.token_proj_dim < 1:
            raise ValueError(f"policy.obs_proj_dim must be >= 0 and token_proj_dim >= 1, got "
                             f"{self.obs_proj_dim}, {self.token_proj_dim}")
        if not self.use_state and self.head == "transformer":
            raise ValueError("policy.use_state=false is supported by the mlp and diffusion heads; the "
                             "transformer head's queries start from its proprio token: keep use_state=true")
        d = self.diffusion  # the heads' own settings are checked by their configs
        if self.head == "diffusion" and self.normalizer_mode == "gaussian" and d.clip_sample:
            raise ValueError("policy.normalizer_mode=gaussian with policy.diffusion.clip_sample=true would "
                             "clip every action beyond one standard deviation: set "
                             "policy.diffusion.clip_sample=false or keep normalizer_mode=limits (actions in "
                             "[-1, 1])")
        if self.head == "diffusion" and self.horizon % (2 ** (len(d.down_dims) - 1)):
            raise ValueError(f"policy.horizon={self.horizon} must be divisible by "
                             f"{2 ** (len(d.down_dims) - 1)} "
                             f"for diffusion.down_dims={list(d.down_dims)}; change horizon or use fewer "
                             "down_dims")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (saved in checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: PolicyConfig | Mapping[str, Any]) -> PolicyConfig:
        """From a mapping (hydra node, checkpoint JSON); unknown keys and wrong types raise ValueError."""
        if isinstance(data, PolicyConfig):
            return data
        if isinstance(data, DictConfig):
            data = OmegaConf.to_container(data, resolve=True)  # type: ignore[assignment]
        plain = {k: v for k, v in dict(data).items() if k != "name"}  # 'name' labelled pre-typed configs
        try:
            obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), plain))
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None)
            raise ValueError(f"policy config: {f'{key}: ' * bool(key)}{str(e).strip().splitlines()[0]}; "
                             "valid "
                             "keys are the fields of s2_policy.policies.config.PolicyConfig") from None
        assert isinstance(obj, PolicyConfig)  # to_object of a PolicyConfig node; for the type checker
        return obj


def register_schema() -> None:
    """Register :class:`PolicyConfig` as the hydra schema ``policy/schema``."""
    ConfigStore.instance().store(group="policy", name="schema", node=PolicyConfig)
