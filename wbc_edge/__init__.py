"""wbc-edge: white-blood-cell classification at the edge.

``import wbc_edge`` stays light (numpy, Pillow and the C++ extension); torch,
onnx and tensorrt are imported only by the backend or command that needs them.
"""

from .preprocess import preprocess_batch

__version__ = "0.1.0"

from .classifier import Classifier
from .errors import MissingDependencyError, ModelMismatchError, WbcEdgeError
from .prediction import Prediction
from .review import ReviewPolicy

__all__ = [
    "Classifier",
    "MissingDependencyError",
    "ModelMismatchError",
    "Prediction",
    "ReviewPolicy",
    "WbcEdgeError",
    "__version__",
    "preprocess_batch",
]
