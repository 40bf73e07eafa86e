#!/usr/bin/env bash
# GPU rendering benchmark, run ON the device machine from the repo root (see prepare.sh):
#   run(command="bash benchmarks/gpu/device_bench.sh", carry=[".whl", ".gl"], timeout_s=420)
# Writes $OUT/device_bench.log: the EGL renderer, then bench-render at 1920x1080 and 512x256
# with synchronous (--pipeline 1) and asynchronous (--pipeline 2) readback, 300 frames each.
set -uo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ] && [ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ]; then
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "from rasterizer.context import create_context, context_info; print(context_info(create_context()))"
  for size in 1920x1080 512x256; do
    for pipe in 1 2; do
      python3 -m rap.cli bench-render --source womd:data/waymo/womd_scenario_637f20cafde22ff8.tfrecord \
        --rig front3 --size "$size" --frames 300 --pipeline "$pipe" 2>&1 | tail -1
    done
  done
} 2>&1 | tee "$OUT/device_bench.log"
