"""L-CAM-Img on ResNet-50 layer4 (7x7 FMs), L-CAM loss."""

from models.backbones import RESNET50_FAMILY
from models.lcam import variant

model = variant(RESNET50_FAMILY, "ResNet50_L_CAM_Img", __doc__, apply_cam_to="image", loss="lcam")
