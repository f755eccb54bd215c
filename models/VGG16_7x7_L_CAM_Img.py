"""L-CAM-Img on VGG-16 pool5 (7x7 FMs), L-CAM loss."""

from models.backbones import VGG16_FAMILY, VGG16_POOL5
from models.lcam import variant

model = variant(
    VGG16_FAMILY, "VGG16_7x7_L_CAM_Img", __doc__, apply_cam_to="image", loss="lcam", feature_end=VGG16_POOL5
)
