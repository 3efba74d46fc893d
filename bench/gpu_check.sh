#!/usr/bin/env bash
# One command for the first machine with an NVIDIA GPU: an SD2-sized random checkpoint at 768 px, float16 and
# bfloat16, 1 step x 1 and 50 steps x 10, with and without torch.compile; seconds per image and peak GPU memory.
#   bash bench/gpu_check.sh [PYTHON] [--quick]     (--quick: 10 x 10 instead of 50 x 10, no compile of 50 x 10)
# Needs torch with CUDA and the package installed (pip install -e .). Writes nothing outside a temp folder.
set -euo pipefail
PY="${1:-python}"
QUICK="${2:-}"
cd "$(dirname "$0")/.."
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$PY" -m metricgold_engine make-tiny-checkpoint "$TMP/sd2" --size sd2 >/dev/null
LONG="50 10"
[ "$QUICK" = "--quick" ] && LONG="10 10"
status=0
for dtype in float16 bfloat16; do
  for setting in "1 1" "$LONG"; do
    set -- $setting
    for compile in "" "--compile"; do
      "$PY" bench/gpu_speed.py "$TMP/sd2" --dtype "$dtype" --steps "$1" --ensemble "$2" --resolution 768 \
        $compile || status=1
    done
  done
done
exit $status
