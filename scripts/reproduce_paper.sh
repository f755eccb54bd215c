#!/bin/sh
# The paper's AD/IC table in one command (README: 'Reproduce the paper'): every released L-CAM head
# found under $SNAPSHOTS_DIR/<head>/, and Grad-CAM, Grad-CAM++, Score-CAM and RISE on the same
# backbones, at 100 %, 50 % and 15 % of the pixels kept, on the authors' evaluation list; one pass
# over the images per backbone; the table as Markdown, CSV and JSON under runs/reproduce/.
# Usage: sh scripts/reproduce_paper.sh [FLAG VALUE ...]    (-h, --help: this text)
#   every flag of the command it runs: python -m scripts.reproduce_paper --help
# Runs from any directory. Environment variables (defaults: the README's layout under the repository root):
#   SNAPSHOTS_DIR     $ROOT/snapshots (one folder per head: VGG16_L_CAM_Fm, VGG16_L_CAM_Img, VGG16_7x7_L_CAM_Img,
#                     ResNet50_L_CAM_Fm, ResNet50_L_CAM_Img)
#   IMG_DIR           $ROOT/dataset/ILSVRC2012_img_val
#   TEST_LIST         $ROOT/datalist/ILSVRC/Evaluation_2000.txt (python -m scripts.make_datalist authors)
#   METHODS           gradcam,gradcampp,scorecam,rise
#   BASELINE_WEIGHTS  IMAGENET1K_V1 (torchvision's, as the authors' comparison; or head, a state_dict path)
#   OUTPUT_DIR        $ROOT/runs/reproduce
#   LAUNCHER          python
# Further flags go to scripts.reproduce_paper and win over the ones below, e.g.
#   sh scripts/reproduce_paper.sh --dry_run                 # check the setup, run nothing
#   sh scripts/reproduce_paper.sh --limit 200 --amp bf16    # a quick look on the first 200 images
set -eu
ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
. "$ROOT/scripts/help.sh"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

exec ${LAUNCHER:-python} -m scripts.reproduce_paper \
	--snapshots_dir "${SNAPSHOTS_DIR:-$ROOT/snapshots}" \
	--img_dir "${IMG_DIR:-$ROOT/dataset/ILSVRC2012_img_val}" \
	--test_list "${TEST_LIST:-$ROOT/datalist/ILSVRC/Evaluation_2000.txt}" \
	--methods "${METHODS:-gradcam,gradcampp,scorecam,rise}" \
	--baseline_weights "${BASELINE_WEIGHTS:-IMAGENET1K_V1}" \
	--output_dir "${OUTPUT_DIR:-$ROOT/runs/reproduce}" \
	--input_size 256 \
	--crop_size 224 \
	--percentages 0,0.5,0.85 \
	"$@"
