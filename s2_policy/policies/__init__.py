"""Policies: normaliser, MLP, diffusion and transformer heads, temporal ensembling, and ``Policy`` (frozen
encoder + head)."""

from s2_policy.policies.diffusion_head import DiffusionHead
from s2_policy.policies.mlp_head import MLPHead
from s2_policy.policies.normalizer import LinearNormalizer
from s2_policy.policies.policy import Policy
from s2_policy.policies.temporal_ensemble import TemporalEnsembler, ensemble_weights
from s2_policy.policies.transformer_head import TransformerHead

__all__ = ["DiffusionHead", "LinearNormalizer", "MLPHead", "Policy", "TemporalEnsembler", "TransformerHead",
           "ensemble_weights"]
