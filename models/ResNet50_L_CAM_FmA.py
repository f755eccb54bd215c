"""L-CAM-Fm on ResNet-50 layer4 (7x7 FMs), cross-entropy loss only."""

from models.backbones import ResNet50LCAM
from models.lcam import variant

model = variant(ResNet50LCAM, "ResNet50_L_CAM_FmA", __doc__, apply_cam_to="feature_maps", loss="ce")
