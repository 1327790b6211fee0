"""Shared pytest set-up: offscreen rendering and a small thread count so the suite behaves on 2-core CI."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
