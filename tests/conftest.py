"""Shared pytest set-up: offscreen rendering, and OpenMP threads that sleep instead of spinning.

Several tests start worker processes (vector envs, collection, DDP); with OpenMP's default busy-waiting a
2-core machine then runs small torch ops 10-100x slower, so waiting threads are made passive.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
