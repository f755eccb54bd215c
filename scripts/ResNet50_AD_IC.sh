#!/usr/bin/env bash
# AD/IC of an L-CAM ResNet50 checkpoint at 100 %, 50 % and 15 % of the pixels kept (the paper's
# table) in one batched pass: Evaluation_L_CAM_ResNet50.py with the reference's settings.
# Runs from any directory. Paths and the variant come from environment variables (defaults:
# the SPEC layout under the repository); every flag can be added or overridden, e.g.
#   ARCH=ResNet50_L_CAM_Fm bash scripts/ResNet50_AD_IC.sh --restore_from run/lcam_epoch_7_glo_step_1000.pth.tar --amp bf16
#   PERCENTAGES=0.5 bash scripts/ResNet50_AD_IC.sh        # one percentage, as the reference's --percentage
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
ARCH="${ARCH:-ResNet50_L_CAM_Img}"

exec "${PYTHON:-python}" "$ROOT/Evaluation_L_CAM_ResNet50.py" \
	--arch "$ARCH" \
	--img_dir "${IMG_DIR:-$ROOT/dataset/ILSVRC2012_img_val}" \
	--test_list "${TEST_LIST:-$ROOT/datalist/ILSVRC/Evaluation_2000.txt}" \
	--snapshot_dir "${SNAPSHOT_DIR:-$ROOT/snapshots/$ARCH}" \
	--input_size 256 \
	--crop_size 224 \
	--batch_size 64 \
	--percentages "${PERCENTAGES:-0,0.5,0.85}" \
	"$@"
