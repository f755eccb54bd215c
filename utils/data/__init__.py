"""Data: datalists and folders of class subfolders, loaders, decoding on the device, and the
generated digits set. ``utils.data`` itself offers the datalist and loader API."""

from utils.data.datalists import *  # noqa: F403
from utils.data.datalists import __all__  # noqa: F401
