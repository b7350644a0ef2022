#!/usr/bin/env bash
# Installs what building and testing Trident needs, skipping what is already there. Safe to re-run.
set -euo pipefail

DEBIAN_PACKAGES=(
  cmake ninja-build g++ pkg-config python3 python3-pip
  libfmt-dev libspdlog-dev nlohmann-json3-dev libcli11-dev libpcre2-dev libcpp-httplib-dev
  libgtest-dev libbenchmark-dev libopenmpi-dev openmpi-bin xz-utils curl
)

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python packages used by the build (Triton compiles the GPU kernels ahead of time) and by the
# tests that talk to the server with real clients.
PY_PACKAGES=(triton==3.6.0 openai pytest)
py_missing=()
for p in "${PY_PACKAGES[@]}"; do
  name="${p%%=*}"
  python3 -c "import importlib.metadata as m, sys; v = m.version('$name'); sys.exit(0 if '$p' == '$name' or '$p' == '$name==' + v else 1)" \
    >/dev/null 2>&1 || py_missing+=("$p")
done
if ((${#py_missing[@]})); then
  echo "installing Python packages: ${py_missing[*]}"
  # A Debian system Python refuses pip installs (PEP 668) unless told to go ahead.
  python3 -m pip install -q "${py_missing[@]}" ||
    python3 -m pip install -q --break-system-packages "${py_missing[@]}"
fi
