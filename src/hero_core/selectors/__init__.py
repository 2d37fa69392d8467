"""Token selectors: which patch tokens of each view are kept."""

from .cls_attention import ClsAttentionSelector
from .function_aware import FunctionAwareSelector
from .random import RandomSelector
from .strided import StridedSelector

__all__ = ["ClsAttentionSelector", "FunctionAwareSelector", "RandomSelector", "StridedSelector"]
