"""The command line: ``python -m s2_policy.data.lerobot {import,export} ...`` (see ``--help``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from s2_policy.cli import user_errors
from s2_policy.data.lerobot.reader import import_lerobot
from s2_policy.data.lerobot.video import ExportOptions
from s2_policy.data.lerobot.writer import export_lerobot


@user_errors
def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m s2_policy.data.lerobot {import,export} ...`` (see ``--help``)."""
    p = argparse.ArgumentParser(
        prog="python -m s2_policy.data.lerobot",
        description="Convert between LeRobotDataset folders (v3.0; import also v2.1/v2.0) and zarr "
        "replay stores.",
        epilog="Key mapping: observation.images.<cam> <-> <cam>, observation.state <-> state, "
        "action <-> action; other observation.<x> <-> <x>.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser(
        "import",
        help="LeRobotDataset folder (v3.0, v2.1, v2.0) -> zarr store",
        description="Import a local LeRobotDataset folder (v3.0, v2.1 or v2.0) into a zarr replay store "
        "(resumable: rerun the same command after an interruption).",
    )
    pi.add_argument("src", type=Path, help="LeRobotDataset folder (holds meta/info.json)")
    pi.add_argument("out", type=Path, help="output store directory, e.g. datasets/pusht.zarr")
    pi.add_argument("--drop", default="", help="comma-separated LeRobot features to leave out")
    pi.add_argument(
        "--tolerance-s",
        type=float,
        default=1e-4,
        help="max distance between a frame's timestamp and the decoded video frame (default 1e-4 s)",
    )
    pi.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    pe = sub.add_parser(
        "export",
        help="zarr store -> LeRobotDataset v3.0 folder",
        description="Export a zarr replay store as a LeRobotDataset v3.0 folder that LeRobot's loader reads.",
    )
    pe.add_argument("store", type=Path, help="store directory")
    pe.add_argument("out", type=Path, help="output folder (created; must not exist unless --overwrite)")
    pe.add_argument("--task", help="task text for every frame (default: the store's tasks or env_id)")
    pe.add_argument("--fps", type=int, help="frame rate (default: the store's fps or control_hz attribute)")
    pe.add_argument("--robot-type", help="robot_type recorded in info.json")
    pe.add_argument(
        "--vcodec", default="libsvtav1", help="video encoder: libsvtav1 (AV1, default) or libx264"
    )
    pe.add_argument("--crf", type=int, default=23, help="video quality, lower is better (default 23)")
    pe.add_argument("--gop", type=int, default=2, help="keyframe interval in frames (default 2)")
    pe.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    a = p.parse_args(argv)
    if a.command == "import":
        store = import_lerobot(
            a.src,
            a.out,
            drop=[x for x in a.drop.split(",") if x],
            tolerance_s=a.tolerance_s,
            overwrite=a.overwrite,
        )
        print(
            f"wrote {store.path}: {store.n_episodes} episodes, {store.n_frames} frames, keys {store.keys()}"
        )
    else:
        out = export_lerobot(
            a.store,
            a.out,
            task=a.task,
            fps=a.fps,
            robot_type=a.robot_type,
            options=ExportOptions(vcodec=a.vcodec, crf=a.crf, gop=a.gop),
            overwrite=a.overwrite,
        )
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
