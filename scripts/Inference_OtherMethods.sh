#!/bin/sh
# The reference comparison (its Inference_OtherMethods/*.py, one command): Grad-CAM, Grad-CAM++,
# Score-CAM and RISE on torchvision's ImageNet VGG-16 (or ResNet-50), AD/IC at 100/50/15 % of the
# pixels kept, on the evaluation list; tables, figures and throughput under runs/compare/.
# Usage: sh scripts/Inference_OtherMethods.sh [FLAG VALUE ...]    (-h, --help: this text)
#   every flag of the command it runs: python -m scripts.compare --help
# Runs from any directory. Environment variables (defaults: the README's layout under the repository root):
#   FAMILY        vgg16 (or resnet50)
#   WEIGHTS       IMAGENET1K_V1 (a torchvision weights name, a state_dict path, or none)
#   METHODS       gradcam,gradcampp,scorecam,rise
#   IMG_DIR       $ROOT/dataset/ILSVRC2012_img_val
#   TEST_LIST     $ROOT/datalist/ILSVRC/Evaluation_2000.txt
#   OUTPUT_DIR    $ROOT/runs/compare/$FAMILY
#   PERCENTAGES   0,0.5,0.85
#   LAUNCHER      python
# Further flags go to scripts.compare and win over the ones below, e.g.
#   sh scripts/Inference_OtherMethods.sh --limit 200 --amp bf16
#   FAMILY=resnet50 sh scripts/Inference_OtherMethods.sh --lcam ResNet50_L_CAM_Img=snapshots/ResNet50_L_CAM_Img
set -eu
ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
. "$ROOT/scripts/help.sh"
FAMILY=${FAMILY:-vgg16}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

exec ${LAUNCHER:-${PYTHON:-python}} -m scripts.compare \
	--classifier "$FAMILY=${WEIGHTS:-IMAGENET1K_V1}" \
	--methods "${METHODS:-gradcam,gradcampp,scorecam,rise}" \
	--img_dir "${IMG_DIR:-$ROOT/dataset/ILSVRC2012_img_val}" \
	--test_list "${TEST_LIST:-$ROOT/datalist/ILSVRC/Evaluation_2000.txt}" \
	--input_size 256 \
	--crop_size 224 \
	--percentages "${PERCENTAGES:-0,0.5,0.85}" \
	--output_dir "${OUTPUT_DIR:-$ROOT/runs/compare/$FAMILY}" \
	"$@"
