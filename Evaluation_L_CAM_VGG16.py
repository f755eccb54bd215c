"""AD/IC of an L-CAM VGG-16 checkpoint (the reference's ``Evaluation_L_CAM_VGG16.py``,
batched): ``python Evaluation_L_CAM_VGG16.py --restore_from CKPT --percentages 0,0.5,0.85``.

Defaults as in the reference: ``--arch VGG16_L_CAM_Img``, ``--percentage 0``. Every flag:
``--help``; the work is done by :mod:`scripts.evaluate`.
"""

from scripts.evaluate import cli

DEFAULTS = {"arch": "VGG16_L_CAM_Img", "percentage": 0.0}

if __name__ == "__main__":
    cli(**DEFAULTS)
