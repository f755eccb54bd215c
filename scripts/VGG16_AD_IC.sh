#!/bin/sh
# AD/IC of an L-CAM VGG16 checkpoint at 100 %, 50 % and 15 % of the pixels kept (the paper's
# table), in one batched pass that shares the plain forward (README: 'Evaluation (AD/IC)').
# Usage: sh scripts/VGG16_AD_IC.sh [FLAG VALUE ...]    (-h, --help: this text)
#   every flag of the command it runs: python Evaluation_L_CAM_VGG16.py --help
# Runs from any directory. Environment variables (defaults: the README's layout under the repository root):
#   ARCH          VGG16_L_CAM_Img (or VGG16_L_CAM_Fm, VGG16_7x7_L_CAM_Img, VGG16_L_CAM_ImgA, VGG16_L_CAM_FmA)
#   IMG_DIR       $ROOT/dataset/ILSVRC2012_img_val
#   TEST_LIST     $ROOT/datalist/ILSVRC/Evaluation_2000.txt
#   SNAPSHOT_DIR  $ROOT/snapshots/$ARCH (its newest checkpoint is evaluated, unless --restore_from FILE)
#   PERCENTAGES   0,0.5,0.85 (one value = the reference's --percentage)
#   LAUNCHER      python
# Further flags go to Evaluation_L_CAM_VGG16.py and win over the ones below, e.g.
#   sh scripts/VGG16_AD_IC.sh --restore_from snapshots/VGG16_L_CAM_Img/imagenet_epoch_7_glo_step_160000.pth.tar --amp bf16
set -eu
ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
. "$ROOT/scripts/help.sh"
ARCH=${ARCH:-VGG16_L_CAM_Img}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

exec ${LAUNCHER:-python} "$ROOT/Evaluation_L_CAM_VGG16.py" \
	--arch "$ARCH" \
	--img_dir "${IMG_DIR:-$ROOT/dataset/ILSVRC2012_img_val}" \
	--test_list "${TEST_LIST:-$ROOT/datalist/ILSVRC/Evaluation_2000.txt}" \
	--snapshot_dir "${SNAPSHOT_DIR:-$ROOT/snapshots/$ARCH}" \
	--input_size 256 \
	--crop_size 224 \
	--batch_size 64 \
	--percentages "${PERCENTAGES:-0,0.5,0.85}" \
	"$@"
