#!/bin/sh
# Sanity checks of an L-CAM checkpoint and the baselines on its classifier (README: 'Sanity checks'):
# the classifier's layers re-initialised one group after the other from the output down, then the
# L-CAM head, and a random other class explained; Spearman rank correlation and SSIM with the
# original maps, per step and method, as tables and figures under runs/sanity/.
# Usage: sh scripts/sanity.sh [FLAG VALUE ...]    (-h, --help: this text)
#   every flag of the command it runs: python -m scripts.sanity --help
# Runs from any directory. Environment variables (defaults: the README's layout under the repository root):
#   ARCH          VGG16_L_CAM_Img (any variant whose snapshot folder exists)
#   SNAPSHOT_DIR  $ROOT/snapshots/$ARCH (its newest checkpoint is checked)
#   METHODS       gradcam,gradcampp
#   IMG_DIR       $ROOT/dataset/ILSVRC2012_img_val
#   TEST_LIST     $ROOT/datalist/ILSVRC/Evaluation_2000.txt
#   OUTPUT_DIR    $ROOT/runs/sanity/$ARCH
#   LIMIT         32 (images compared)
#   LAUNCHER      python
# Further flags go to scripts.sanity and win over the ones below, e.g.
#   sh scripts/sanity.sh --mode independent --amp bf16
#   METHODS=gradcam,gradcampp,scorecam,rise LIMIT=100 sh scripts/sanity.sh
set -eu
ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
. "$ROOT/scripts/help.sh"
ARCH=${ARCH:-VGG16_L_CAM_Img}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

exec ${LAUNCHER:-python} -m scripts.sanity \
	--lcam "$ARCH=${SNAPSHOT_DIR:-$ROOT/snapshots/$ARCH}" \
	--methods "${METHODS:-gradcam,gradcampp}" \
	--img_dir "${IMG_DIR:-$ROOT/dataset/ILSVRC2012_img_val}" \
	--test_list "${TEST_LIST:-$ROOT/datalist/ILSVRC/Evaluation_2000.txt}" \
	--input_size 256 \
	--crop_size 224 \
	--limit "${LIMIT:-32}" \
	--output_dir "${OUTPUT_DIR:-$ROOT/runs/sanity/$ARCH}" \
	"$@"
