#!/usr/bin/env bash
# Reproduce the built-in demo model from nothing, on a CPU: synthetic data rendered by Blender, then the project's
# own trainer (image VAE -> depth VAE -> UNet -> single-step UNet fine-tuning), then the held-out report. Run from
# the repository root after `make install`. The step counts in configs/demo_*.yaml set the cost.
#
# This is the order the shipped model was made in: the first three stages trained on the first 1,400 frames, then
# the data set was extended to 4,400 frames (the generator resumes; the hash-based train/val split keeps every
# earlier frame on its side) before the single-step stage.
set -euo pipefail
PY=${PY:-.venv/bin/python}
synth() { $PY -m trainer.synth --out data/synth --count "$1" --resolution 256x192 --seed 0; }
synth 1400
$PY -m trainer vae  --config configs/demo_image_vae.yaml
$PY -m trainer vae  --config configs/demo_depth_vae.yaml
$PY -m trainer unet --config configs/demo_unet.yaml
synth 4400
$PY -m trainer unet --config configs/demo_unet_onestep.yaml
FINAL=runs/demo-unet-onestep/final
$PY scripts/demo_model_report.py --model "$FINAL" --data data/synth --out "$FINAL"-report
rm -rf metricgold_engine/demo_model
cp -r "$FINAL" metricgold_engine/demo_model
cp "$FINAL"-report/report.md metricgold_engine/demo_model/REPORT.md
cp "$FINAL"-report/report.json metricgold_engine/demo_model/report.json
