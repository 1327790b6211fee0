#!/usr/bin/env bash
# One-step set-up on a fresh Debian/Ubuntu machine (CPU or GPU): system libraries for offscreen MuJoCo
# rendering (EGL via Mesa), then the project and its Python dependencies (editable install).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libglu1-mesa ffmpeg; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "installing system packages: ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

python -m pip install -q --upgrade pip >/dev/null
# lerobot: pyarrow + PyAV (LeRobot import/export); deploy: ONNX Runtime, OpenVINO, NNCF (~360 MB installed, vs
# ~5.5 GB for torch). Both so that their tests run too.
python -m pip install -q -e ".[dev,robomimic,lerobot,deploy]"
echo "s2_policy installed: $(python -c 'import s2_policy, torch, mujoco; print("torch", torch.__version__, "mujoco", mujoco.__version__)')"
