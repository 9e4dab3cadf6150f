#!/usr/bin/env bash
# Set up .venv with everything napari-mrcz needs, on a fresh Debian machine too.
#   scripts/setup.sh            runtime + demo
#   scripts/setup.sh test       + test tools and the reference implementations
# Installs missing Debian packages with apt-get (run as root, or have sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo}"
PYTHON="${PYTHON:-python3}"

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# napari in a real window: Xvfb and the xcb / OpenGL libraries Qt 6 loads.
GUI_PACKAGES=(xvfb xauth x11-utils libgl1 libegl1 libopengl0 libgl1-mesa-dri libglib2.0-0 libdbus-1-3
  libfontconfig1 libxkbcommon0 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0
  libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0
  libxcb-xkb1 fonts-dejavu-core)
apt_install "${GUI_PACKAGES[@]}"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  apt_install python3 python3-venv python3-pip
fi
if ! "$PYTHON" -c "import venv, ensurepip" >/dev/null 2>&1; then
  apt_install python3-venv python3-pip
fi

stamp=".venv/.installed-$extras"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
  touch "$stamp"
fi
