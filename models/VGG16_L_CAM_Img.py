"""L-CAM-Img on VGG-16 conv5_3 (14x14 FMs), L-CAM loss."""

from models.backbones import VGG16_FAMILY
from models.lcam import variant

model = variant(VGG16_FAMILY, "VGG16_L_CAM_Img", __doc__, apply_cam_to="image", loss="lcam")
