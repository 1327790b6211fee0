"""``python -m s2_policy.pretrain [key=value ...]``: MAE pre-training (config: configs/pretrain.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from s2_policy.cli import user_errors
from s2_policy.pretrain.train import run_pretraining


@hydra.main(version_base="1.3", config_path="../../configs", config_name="pretrain")
@user_errors
def main(cfg: DictConfig) -> None:
    path = run_pretraining(cfg)
    print(f"encoder checkpoint: {path}")


if __name__ == "__main__":
    main()
