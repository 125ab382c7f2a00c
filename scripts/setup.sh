#!/usr/bin/env bash
# Idempotent set-up: Debian packages for headless MuJoCo, a .venv with the
# CPU torch pin, the ROS 2 wheels, robosuite + mujoco, the project and dev tools.
# Safe to re-run; a stamp file skips the pip work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

apt_packages=(libosmesa6 libegl1 libgl1)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi

stamp="$VENV/.wmpo-setup-stamp"
want=$(cat constraints.txt requirements.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import wmpo_core, rclpy, robosuite, torch" 2>/dev/null; then
  echo "[setup] .venv is up to date"
  exit 0
fi

PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# The machine's own pip constraint (if any) and ours both apply: pass ours with -c.
"${PIP[@]}" -c constraints.txt torch==2.13.0
"${PIP[@]}" -c constraints.txt -r requirements.txt
"${PIP[@]}" -c constraints.txt --no-deps -e .
# torchvision from PyPI is CUDA-linked beside this torch and breaks `import diffusers`.
if "$VENV/bin/python" -m pip show torchvision >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip uninstall -y -q torchvision
fi
"$VENV/bin/python" - <<'PY'
import rclpy, robosuite, torch, rosbags, diffusers, transformers  # noqa: F401
assert torch.__version__.startswith("2.13"), torch.__version__
print(f"[setup] ok: torch {torch.__version__}, robosuite {robosuite.__version__}")
PY
echo "$want" > "$stamp"
