"""lcnn_lab: the helper package behind the lcnn-lab book on lightweight CNNs and model compression."""
__version__ = "0.1.0"

from . import config  # noqa: E402,F401
