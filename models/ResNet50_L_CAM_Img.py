"""L-CAM-Img on ResNet-50 layer4 (7x7 FMs), L-CAM loss."""

from models.backbones import ResNet50LCAM
from models.lcam import variant

model = variant(ResNet50LCAM, "ResNet50_L_CAM_Img", __doc__, apply_cam_to="image", loss="lcam")
