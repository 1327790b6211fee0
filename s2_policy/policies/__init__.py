"""Policies: normaliser, MLP and diffusion heads, and ``Policy`` (frozen encoder + head)."""

from s2_policy.policies.diffusion_head import DiffusionHead
from s2_policy.policies.mlp_head import MLPHead
from s2_policy.policies.normalizer import LinearNormalizer
from s2_policy.policies.policy import Policy

__all__ = ["DiffusionHead", "LinearNormalizer", "MLPHead", "Policy"]
