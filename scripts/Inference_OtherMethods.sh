#!/usr/bin/env bash
# The reference comparison (its Inference_OtherMethods/*.py, one command): Grad-CAM, Grad-CAM++,
# Score-CAM and RISE on torchvision's ImageNet VGG-16 (or ResNet-50), AD/IC at 100/50/15 % of the
# pixels kept, on the evaluation list; tables, figures and throughput under runs/compare/.
# Runs from any directory. Environment variables (defaults: the SPEC layout under the repository):
# FAMILY (vgg16 | resnet50), WEIGHTS (IMAGENET1K_V1, a state_dict path or none), METHODS, IMG_DIR,
# TEST_LIST, OUTPUT_DIR, PERCENTAGES. Flags are forwarded, e.g.
#   bash scripts/Inference_OtherMethods.sh --limit 200 --amp bf16
#   FAMILY=resnet50 bash scripts/Inference_OtherMethods.sh --lcam ResNet50_L_CAM_Img=snapshots/ResNet50_L_CAM_Img
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
FAMILY="${FAMILY:-vgg16}"

exec "${PYTHON:-python}" -m scripts.compare \
	--classifier "$FAMILY=${WEIGHTS:-IMAGENET1K_V1}" \
	--methods "${METHODS:-gradcam,gradcampp,scorecam,rise}" \
	--img_dir "${IMG_DIR:-$ROOT/dataset/ILSVRC2012_img_val}" \
	--test_list "${TEST_LIST:-$ROOT/datalist/ILSVRC/Evaluation_2000.txt}" \
	--input_size 256 \
	--crop_size 224 \
	--percentages "${PERCENTAGES:-0,0.5,0.85}" \
	--output_dir "${OUTPUT_DIR:-$ROOT/runs/compare/$FAMILY}" \
	"$@"
