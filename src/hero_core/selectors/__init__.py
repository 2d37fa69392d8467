"""Token selectors: which patch tokens of each view (or, ``scope = "image"``, of the whole image) are kept."""

from .cdpruner import CDPrunerSelector
from .cls_attention import ClsAttentionSelector
from .dart import DartSelector
from .divprune import DivPruneSelector
from .function_aware import FunctionAwareSelector
from .random import RandomSelector
from .strided import StridedSelector
from .visionzip import VisionZipSelector

__all__ = [
    "CDPrunerSelector",
    "ClsAttentionSelector",
    "DartSelector",
    "DivPruneSelector",
    "FunctionAwareSelector",
    "RandomSelector",
    "StridedSelector",
    "VisionZipSelector",
]
