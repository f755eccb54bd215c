#!/bin/sh
# Train ResNet50_L_CAM_ImgA with the reference recipe (cross-entropy loss only; README: 'Training').
# Usage: sh scripts/ResNet50_train_CE.sh [FLAG VALUE ...]    (-h, --help: this text)
#   every flag of the command it runs: python train_L_CAM.py --help
# Runs from any directory. Environment variables (defaults: the README's layout under the repository root):
#   ARCH          ResNet50_L_CAM_ImgA (or ResNet50_L_CAM_FmA)
#   IMG_DIR       $ROOT/dataset/ILSVRC2012_img_train
#   TRAIN_LIST    $ROOT/datalist/ILSVRC/ResNet50_train.txt (model-truth labels: python -m scripts.make_datalist train)
#   SNAPSHOT_DIR  $ROOT/snapshots/$ARCH (an interrupted run continues from its newest checkpoint)
#   LAUNCHER      python (several GPUs: LAUNCHER="torchrun --nproc_per_node 4")
# Further flags go to train_L_CAM.py and win over the ones below, e.g.
#   sh scripts/ResNet50_train_CE.sh --amp bf16 --channels_last --num_workers 16
set -eu
ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
. "$ROOT/scripts/help.sh"
ARCH=${ARCH:-ResNet50_L_CAM_ImgA}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

exec ${LAUNCHER:-python} "$ROOT/train_L_CAM.py" \
	--arch "$ARCH" \
	--img_dir "${IMG_DIR:-$ROOT/dataset/ILSVRC2012_img_train}" \
	--train_list "${TRAIN_LIST:-$ROOT/datalist/ILSVRC/ResNet50_train.txt}" \
	--snapshot_dir "${SNAPSHOT_DIR:-$ROOT/snapshots/$ARCH}" \
	--batch_size 64 \
	--lr 0.0001 \
	--epoch 26 \
	--input_size 256 \
	--crop_size 224 \
	--backbone_mode reference \
	--resume True \
	"$@"
