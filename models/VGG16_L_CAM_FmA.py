"""L-CAM-Fm on VGG-16 conv5_3 (14x14 FMs), cross-entropy loss only."""

from models.backbones import VGG16_FAMILY
from models.lcam import variant

model = variant(VGG16_FAMILY, "VGG16_L_CAM_FmA", __doc__, apply_cam_to="feature_maps", loss="ce")
