"""wbc-edge: white-blood-cell classification at the edge.

``import wbc_edge`` stays light (numpy, Pillow and the C++ extension); torch,
onnx and tensorrt are imported only by the backend or command that needs them.
"""

from .preprocess import preprocess_batch

__version__ = "0.1.0"

from .classifier import Classifier  # noqa: E402  (after __version__, which reports read)
from .errors import MissingDependencyError, ModelMismatchError, WbcEdgeError  # noqa: E402
from .prediction import Prediction  # noqa: E402
from .review import ReviewPolicy  # noqa: E402

__all__ = [
    "Classifier",
    "Prediction",
    "ReviewPolicy",
    "WbcEdgeError",
    "MissingDependencyError",
    "ModelMismatchError",
    "preprocess_batch",
    "__version__",
]
