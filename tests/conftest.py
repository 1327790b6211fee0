"""Shared pytest set-up: offscreen rendering, and OpenMP threads that sleep instead of spinning.

Several tests start worker processes (vector envs, collection, DDP); with OpenMP's default busy-waiting a
2-core machine then runs small torch ops 10-100x slower, so waiting threads are made passive.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402  (after the environment variables above)

# One intra-op thread for the whole suite: the models under test are tiny, and on a 2-core runner that also
# hosts worker processes two threads stall on each other in every small op (5-100x slower).
torch.set_num_threads(1)
