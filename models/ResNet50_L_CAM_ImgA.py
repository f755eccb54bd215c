"""L-CAM-Img on ResNet-50 layer4 (7x7 FMs), cross-entropy loss only.

Reference quirk kept by default: the pass that feeds the attention mechanism sees the
unnormalised image; ``model(normalize_first_pass=True)`` corrects it.
"""

from models.backbones import RESNET50_FAMILY
from models.lcam import variant

model = variant(
    RESNET50_FAMILY, "ResNet50_L_CAM_ImgA", __doc__, apply_cam_to="image", loss="ce", normalize_first_pass=False
)
