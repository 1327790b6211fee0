"""``python -m s2_policy.jobs.evaluate checkpoint=PATH``: roll a saved policy out on its task's test seeds.

The task defaults to the one stored in the checkpoint; ``task=<name>`` picks a ``configs/task`` entry instead.
Evaluation seeds come from the task's seed plan and are never demonstration seeds. Writes a JSON result
(success rate, Wilson 95 % interval, encoder cost) that ``s2_policy.evaluation.compare`` reads, and videos.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from envs.spec import TaskSpec
from s2_policy.evaluation.evaluate import evaluate_policy, format_result, write_json
from s2_policy.evaluation.profile import encoder_profile, task_image_sizes
from s2_policy.jobs.common import task_spec, user_errors
from s2_policy.policies import Policy
from s2_policy.runtime import configure_cpu


def require_diffusion_head(policy: Policy, key: str, value: object) -> None:
    """Refuse a diffusion-sampler setting (``key=value``) on a policy with another head."""
    if policy.config.head != "diffusion":
        raise ValueError(f"{key}={value} applies to a diffusion head; this policy's head is "
                         f"{policy.config.head!r}: leave {key}=null")


def set_ddim_steps(policy: Policy, steps: int) -> int:
    """Sample a diffusion policy with ``steps`` DDIM steps instead of the trained setting (choose it on
    ``seeds=selection``); returns ``steps``."""
    require_diffusion_head(policy, "ddim_steps", steps)
    limit = policy.config.diffusion.num_train_timesteps
    if not 1 <= steps <= limit:
        raise ValueError(f"ddim_steps must be in [1, {limit}] (the policy's num_train_timesteps), "
                         f"got {steps}")
    policy.config.diffusion.num_inference_steps = steps
    policy.core.head.set_sampler(num_inference_steps=steps)
    return steps


def set_timestep_spacing(policy: Policy, spacing: str) -> str:
    """Sample a diffusion policy with DDIM timestep ``spacing`` (``leading`` | ``trailing`` | ``linspace``)
    instead of the trained setting (choose it on ``seeds=selection``); returns ``spacing``."""
    require_diffusion_head(policy, "timestep_spacing", spacing)
    # the config checks the value (one list of spacings, in DiffusionHeadConfig)
    policy.config.diffusion = dataclasses.replace(policy.config.diffusion, timestep_spacing=spacing)
    policy.core.head.set_sampler(timestep_spacing=spacing)
    return spacing


def set_diffusion_samples(policy: Policy, samples: int) -> int:
    """Average ``samples`` sampled chunks per query of a diffusion policy (choose it on ``seeds=selection``);
    returns ``samples``."""
    require_diffusion_head(policy, "diffusion_samples", samples)
    # the config checks the value (>= 1)
    policy.config.diffusion = dataclasses.replace(policy.config.diffusion, num_samples=samples)
    policy.core.head.set_sampler(num_samples=samples)
    return samples


def set_inpaint(policy: Policy, mode: str) -> str:
    """Tie each new diffusion chunk to the previous one (``none`` | ``executed`` | ``plan``, see
    ``DiffusionHeadConfig``) instead of the trained setting (choose it on ``seeds=selection``); returns
    ``mode``."""
    require_diffusion_head(policy, "inpaint", mode)
    # the config checks the value
    policy.config.diffusion = dataclasses.replace(policy.config.diffusion, inpaint=mode)
    return mode


def set_action_steps(policy: Policy, steps: int) -> int:
    """Execute ``steps`` actions of each predicted chunk before predicting again (re-plan more or less often
    than trained; choose it on ``seeds=selection``); returns ``steps``."""
    c = policy.config
    if not 1 <= steps <= c.horizon - c.n_obs_steps + 1:
        raise ValueError(f"n_action_steps must be in [1, horizon - n_obs_steps + 1 = "
                         f"{c.horizon - c.n_obs_steps + 1}] for this policy, got {steps}")
    c.n_action_steps = steps
    return steps


def set_temporal_ensemble(policy: Policy, enabled: bool, m: float | None = None) -> str:
    """Turn the head's temporal ensembling on or off (and set its ``m``) after training (choose it on
    ``seeds=selection``); returns the label suffix (``te<m>`` or ``chunked``)."""
    head = policy.config.head
    block = getattr(policy.config, head)
    # the config checks the value (m >= 0)
    block = dataclasses.replace(block, temporal_ensemble=enabled,
                                temporal_ensemble_m=block.temporal_ensemble_m if m is None else float(m))
    setattr(policy.config, head, block)
    return f"te{block.temporal_ensemble_m:g}" if enabled else "chunked"


INFERENCE_SETTINGS = ("ddim_steps", "timestep_spacing", "diffusion_samples", "inpaint", "n_action_steps",
                      "temporal_ensemble", "temporal_ensemble_m")


def apply_inference_settings(policy: Policy, settings: Mapping[str, Any]) -> str:
    """Apply the inference changes named in ``settings`` (the keys of :data:`INFERENCE_SETTINGS`, as in
    ``configs/eval.yaml``; other keys are ignored, a missing or ``None`` value keeps the trained setting);
    returns the label suffix
    (``+ddimK`` ``+<spacing>`` ``+avgK`` ``+inpaint-<mode>`` ``+execK`` ``+te<m>`` | ``+chunked``)."""
    get = settings.get
    suffix = ""
    if get("ddim_steps") is not None:
        suffix += f"+ddim{set_ddim_steps(policy, int(get('ddim_steps')))}"
    if get("timestep_spacing") is not None:
        suffix += f"+{set_timestep_spacing(policy, str(get('timestep_spacing')))}"
    if get("diffusion_samples") is not None:
        suffix += f"+avg{set_diffusion_samples(policy, int(get('diffusion_samples')))}"
    if get("inpaint") is not None:
        suffix += f"+inpaint-{set_inpaint(policy, str(get('inpaint')))}"
    if get("n_action_steps") is not None:
        suffix += f"+exec{set_action_steps(policy, int(get('n_action_steps')))}"
    te, te_m = get("temporal_ensemble"), get("temporal_ensemble_m")
    if te is not None or te_m is not None:
        on = bool(te) if te is not None else policy.temporal_ensemble_m is not None
        if te_m is not None and not on:
            raise ValueError(f"temporal_ensemble_m={te_m} needs temporal ensembling on: add "
                             "temporal_ensemble=true (this policy executes whole chunks)")
        suffix += f"+{set_temporal_ensemble(policy, on, None if te_m is None else float(te_m))}"
    return suffix


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint``; returns the result dict (also written as JSON)."""
    if cfg.checkpoint is None:
        raise ValueError("give the policy to evaluate: checkpoint=path/to/policy.pt")
    if cfg.seeds not in ("test", "selection"):
        raise ValueError(f"seeds={cfg.seeds!r}: evaluate on 'test' or 'selection' seeds")
    configure_cpu(cfg.num_threads)
    ckpt = Path(hydra.utils.to_absolute_path(str(cfg.checkpoint)))
    trust = bool(cfg.get("trust_pickle", False))  # old torch.save checkpoints: unpickling can run code
    policy = Policy.load(ckpt, device=cfg.device, trust_pickle=trust)
    if cfg.get("task"):
        task = task_spec(cfg)
    elif policy.meta.get("task"):
        task = TaskSpec.from_config(policy.meta["task"])
    else:
        raise ValueError(f"{ckpt} stores no task; pass task=<configs/task name>")
    label = policy.meta.get("label", ckpt.stem) + apply_inference_settings(policy, cfg)
    if cfg.get("label"):
        label = str(cfg.label)
    out = Path(cfg.out) if cfg.out else ckpt.parent / f"eval_{task.name}.json"
    res = evaluate_policy(policy, task, cfg.n_episodes, cfg.n_envs, role=cfg.seeds,
                          video_dir=out.parent / "videos" if cfg.n_videos else None, n_videos=cfg.n_videos)
    result = {"label": label, "checkpoint": str(ckpt), "task": task.name,
              "rollout": res, "encoder": {"identity": policy.encoder_identity,
                                          **encoder_profile(policy.encoder, task_image_sizes(task))},
              "trainable_params": policy.trainable_parameters(), "policy_config": policy.config.to_dict(),
              "seed": policy.meta.get("seed")}
    write_json(result, out)
    print(format_result(res))
    print(f"result: {out}")
    return result


@hydra.main(config_path="../../configs", config_name="eval", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> dict:
    """Hydra entry point (see ``configs/eval.yaml``)."""
    return run(cfg)


if __name__ == "__main__":
    main()
