"""Main job: ``python train_policy.py`` — demos, feature cache, head training, rollout evaluation, report.

Steps (each resumable/idempotent): collect scripted-expert demonstrations if the task's store has fewer than
``task.demos.n_episodes`` episodes (or only read and check the store a task brings: ``demos.source: store``);
encode every frame once with the frozen S2 encoder (feature cache keyed by the encoder fingerprint); fit the
normaliser and train the head on cached features; evaluate the full policy (encoder + head) on the task's test
seeds; print the success rate with its Wilson 95 % interval and write ``result.json``. Config:
``configs/config.yaml`` (groups task, encoder, s2, policy, train). Sweeps:
``python train_policy.py -m s2=single,s2 seed=0,1,2`` (joblib launcher: add ``hydra/launcher=joblib``).
Multi-process: ``torchrun --nproc_per_node=N train_policy.py`` (rank 0 collects and evaluates; every rank
encodes a shard of the feature cache and trains with DDP).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from s2_policy.jobs.train import main_job  # also registers the task/policy schemas hydra composes with


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the success rate (useful to sweepers)."""
    return main_job(cfg)


if __name__ == "__main__":
    main()
