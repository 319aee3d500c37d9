"""emotion: facial-expression recognition (timm backbone + dual attention + Bi-LSTM) trained with Accelerate."""
from emotion.labels import CLASS_NAMES, NUM_CLASSES

__version__ = "0.1.0"
__all__ = ["CLASS_NAMES", "NUM_CLASSES", "__version__"]
