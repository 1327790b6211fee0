"""Real-time camera inference: camera sources, S2 tile batcher, fixed-rate control loop, safety, telemetry.

``python -m s2_policy.jobs.realtime checkpoint=PATH robot=sim`` runs a saved policy (docs/realtime.md)::

    from s2_policy.realtime import ControlLoop, LoopConfig, SimRobot, TileBatcher
    from s2_policy.realtime.runner import load_policy, run_realtime
"""

from s2_policy.realtime.actions import ActionScheduler
from s2_policy.realtime.batcher import TileBatcher, encode_naive
from s2_policy.realtime.cameras import (
    CameraSource,
    Frame,
    OpenCVCamera,
    SimCamera,
    SyntheticCamera,
    VideoFileCamera,
    make_camera,
)
from s2_policy.realtime.inference import Inference, InferenceWorker
from s2_policy.realtime.loop import ControlLoop, LoopConfig
from s2_policy.realtime.robot import DryRunRobot, Robot, RobotState, SimRobot
from s2_policy.realtime.safety import SafetyConfig, SafetyMonitor
from s2_policy.realtime.telemetry import StepRecord, Telemetry

__all__ = [
    "ActionScheduler",
    "CameraSource",
    "ControlLoop",
    "DryRunRobot",
    "Frame",
    "Inference",
    "InferenceWorker",
    "LoopConfig",
    "OpenCVCamera",
    "Robot",
    "RobotState",
    "SafetyConfig",
    "SafetyMonitor",
    "SimCamera",
    "SimRobot",
    "StepRecord",
    "SyntheticCamera",
    "Telemetry",
    "TileBatcher",
    "VideoFileCamera",
    "encode_naive",
    "make_camera",
]
