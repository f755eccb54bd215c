"""AD/IC of an L-CAM ResNet-50 checkpoint (the reference's ``Evaluation_L_CAM_ResNet50.py``,
batched): ``python Evaluation_L_CAM_ResNet50.py --restore_from CKPT --percentages 0,0.5,0.85``.

Defaults as in the reference: ``--arch ResNet50_L_CAM_Fm``, ``--percentage 0.85`` (top 15 %
of the pixels kept). Every flag: ``--help``; the work is done by :mod:`scripts.evaluate`.
"""

from scripts.evaluate import cli

DEFAULTS = {"arch": "ResNet50_L_CAM_Fm", "percentage": 0.85}

if __name__ == "__main__":
    cli(**DEFAULTS)
