"""L-CAM-Fm on ResNet-50 layer4 (7x7 FMs), cross-entropy loss only."""

from models.backbones import RESNET50_FAMILY
from models.lcam import variant

model = variant(RESNET50_FAMILY, "ResNet50_L_CAM_FmA", __doc__, apply_cam_to="feature_maps", loss="ce")
