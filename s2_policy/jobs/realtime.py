"""``python -m s2_policy.jobs.realtime checkpoint=PATH robot=sim`` (hydra; ``configs/realtime.yaml``).

Runs a trained policy in the real-time camera loop (``s2_policy.realtime``); with ``robot=sim`` the simulated
episodes run on the task's test seeds. See docs/realtime.md.
"""

from __future__ import annotations

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from s2_policy.jobs.common import user_errors
from s2_policy.realtime.runner import run_realtime


@hydra.main(version_base="1.3", config_path="../../configs", config_name="realtime")
@user_errors
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    logging.getLogger("s2_policy").setLevel(logging.INFO)
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["checkpoint"] = to_absolute_path(plain["checkpoint"])
    out_dir = plain.get("out_dir")
    out_dir = to_absolute_path(out_dir) if out_dir else HydraConfig.get().runtime.output_dir
    summary = run_realtime(plain, out_dir)
    if summary["stop_reason"].startswith("safety stop"):
        raise SystemExit(f"realtime loop ended by a safety stop: {summary['stop_reason']}")


if __name__ == "__main__":
    main()
