#!/bin/sh
# Train VGG16_L_CAM_Img with the reference recipe (L-CAM loss; README: 'Training').
# Usage: sh scripts/VGG16_train.sh [FLAG VALUE ...]    (-h, --help: this text)
#   every flag of the command it runs: python train_L_CAM.py --help
# Runs from any directory. Environment variables (defaults: the README's layout under the repository root):
#   ARCH          VGG16_L_CAM_Img (or VGG16_L_CAM_Fm, VGG16_7x7_L_CAM_Img)
#   IMG_DIR       $ROOT/dataset/ILSVRC2012_img_train
#   TRAIN_LIST    $ROOT/datalist/ILSVRC/VGG16_train.txt (model-truth labels: python -m scripts.make_datalist train)
#   SNAPSHOT_DIR  $ROOT/snapshots/$ARCH (an interrupted run continues from its newest checkpoint)
#   LAUNCHER      python (several GPUs: LAUNCHER="torchrun --nproc_per_node 4")
# Further flags go to train_L_CAM.py and win over the ones below, e.g.
#   sh scripts/VGG16_train.sh --amp bf16 --channels_last --num_workers 16
set -eu
ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
. "$ROOT/scripts/help.sh"
ARCH=${ARCH:-VGG16_L_CAM_Img}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

exec ${LAUNCHER:-python} "$ROOT/train_L_CAM.py" \
	--arch "$ARCH" \
	--img_dir "${IMG_DIR:-$ROOT/dataset/ILSVRC2012_img_train}" \
	--train_list "${TRAIN_LIST:-$ROOT/datalist/ILSVRC/VGG16_train.txt}" \
	--snapshot_dir "${SNAPSHOT_DIR:-$ROOT/snapshots/$ARCH}" \
	--batch_size 64 \
	--lr 0.0001 \
	--epoch 8 \
	--input_size 256 \
	--crop_size 224 \
	--backbone_mode reference \
	--mask_loss_maps batch \
	--resume True \
	"$@"
