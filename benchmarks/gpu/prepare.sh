#!/usr/bin/env bash
# Prepare the GPU rendering benchmark for the lent device machine (no registry there).
# Run here, in the repo root, once per machine: downloads the Python wheels the device image
# lacks (for its Python 3.12) into .whl/ and the EGL/GL loader debs into .gl/ (both git-ignored).
# Then run benchmarks/gpu/device_bench.sh on the device with carry [".whl", ".gl"].
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  moderngl glcontext shapely mapbox-earcut google-crc32c zstandard pydantic pydantic-core \
  annotated-types typing-inspection "waymo-open-dataset-tf-2-12-0==1.6.7"
mkdir -p .gl /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
apt-get $o update -qq
(cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
du -sh .whl .gl
