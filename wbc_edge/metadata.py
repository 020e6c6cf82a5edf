"""Model metadata: what a model artifact means and how its inputs are made.

Every artifact (checkpoint, ONNX, engine) carries or sits beside one of these
records (``model.onnx`` -> ``model.json``). Loading compares them so that a
model is never run with the wrong labels, input size or normalization.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MetadataError
from .preprocess import RESIZE_POLICIES

PRECISIONS = ("fp32", "fp16", "int8")
#: How the graph normalizes its uint8 input (training/deployable.py's Normalize).
INPUT_NORMALIZATIONS = ("dataset", "per_image")
FORMATS = ("checkpoint", "onnx", "engine")
SCHEMA_VERSION = 1
#: What a metadata record may hold: the range of a fitted temperature, of an
#: input side, the number of classes, and the nesting depth of its JSON.
TEMPERATURE_RANGE = (1e-2, 1e2)
INPUT_SIDE = (8, 4096)
MAX_CLASSES = 1000
MAX_JSON_DEPTH = 32
#: Sidecar files larger than this are refused unread.
MAX_METADATA_BYTES = 16 << 20


@dataclass
class ModelMetadata:
    """The facts about a model that its users depend on."""

    classes: list[str]
    input_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_policy: str = "stretch"
    #: "dataset" (mean/std below) or "per_image" (each image's own channel statistics), in the graph
    input_normalization: str = "dataset"
    temperature: float = 1.0  # logits / temperature = calibrated logits
    precision: str = "fp32"
    format: str = "onnx"
    name: str = "wbc-resnet18"
    #: sha256 of the artifact this one was made from (checkpoint -> ONNX -> engine)
    source_sha256: str | None = None
    #: precision-specific facts (calibration method and images, quantization target...)
    quantization: dict[str, Any] | None = None
    #: engines only: TensorRT version, GPU, compute capability, batch profile, flags
    tensorrt: dict[str, Any] | None = None
    #: the domain guard fitted with the model (training/domain_guard.py): method,
    #: stages, threshold, shift_fraction, fitted_on...; None: the model has none.
    #: With a guard the model outputs one more column than classes: ood_score.
    domain_guard: dict[str, Any] | None = None
    #: class activation maps in the outputs (training/deployable.py's ClassActivationMap):
    #: ``{"shape": [classes, h, w], "layer": "layer4"}``; None: the model has none.
    cam: dict[str, Any] | None = None
    #: anything else worth keeping (training run, metrics...)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        if isinstance(self.classes, (str, bytes)) or not isinstance(self.classes, (list, tuple)):
            raise MetadataError(f"classes must be a list of names, got {_short_repr(self.classes)}")
        for name in ("input_size", "mean", "std"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__") or len(value) > 16:
                raise MetadataError(f"{name} must be a short list of numbers, got {_short_repr(value)}")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise MetadataError(f"{name} must hold numbers, got {_short_repr(value)}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise MetadataError(f"temperature must be a number, got {_short_repr(self.temperature)}")
        if any(isinstance(v, float) and not float(v).is_integer() for v in self.input_size):
            raise MetadataError(f"input_size must be whole numbers, got {_short_repr(self.input_size)}")
        self.classes = list(self.classes)
        self.input_size = tuple(int(v) for v in self.input_size)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.temperature = float(self.temperature)
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def cam_shape(self) -> tuple[int, int, int] | None:
        """(classes, h, w) of the model's class activation maps, or None."""
        return None if self.cam is None else tuple(int(v) for v in self.cam["shape"])

    @property
    def output_columns(self) -> dict[str, slice]:
        """Where each output sits in the model's one output row per image:
        ``logits`` (one per class), then the guard's ``ood_score`` and the
        flattened ``cam`` where the model has them."""
        columns, start = {"logits": slice(0, self.num_classes)}, self.num_classes
        if self.domain_guard is not None:
            columns["ood_score"], start = slice(start, start + 1), start + 1
        if self.cam is not None:
            size = math.prod(self.cam_shape)
            columns["cam"], start = slice(start, start + size), start + size
        return columns

    @property
    def num_outputs(self) -> int:
        """Values the model gives per image: one logit per class, plus the
        guard's ood_score and the class activation maps where it has them."""
        return list(self.output_columns.values())[-1].stop

    def validate(self) -> None:
        """Raises MetadataError naming the first inconsistent field."""
        if (not self.classes or len(set(self.classes)) != len(self.classes) or len(self.classes) > MAX_CLASSES
                or not all(isinstance(c, str) and 0 < len(c) <= 64 for c in self.classes)):
            raise MetadataError(f"classes must be a non-empty list of at most {MAX_CLASSES} distinct names "
                                f"(text, 1 to 64 characters), got {_short_repr(self.classes)}")
        if len(self.input_size) != 2 or not all(INPUT_SIDE[0] <= v <= INPUT_SIDE[1] for v in self.input_size):
            raise MetadataError(f"input_size must be (H, W), each from {INPUT_SIDE[0]} to {INPUT_SIDE[1]}, "
                                f"got {_short_repr(self.input_size)}")
        if (len(self.mean) != 3 or len(self.std) != 3 or not all(math.isfinite(v) for v in self.mean + self.std)
                or min(self.std) <= 0):
            raise MetadataError(f"mean/std need 3 finite values each, std > 0; got {self.mean} / {self.std}")
        if not isinstance(self.name, str) or not isinstance(self.extra, dict):
            raise MetadataError(f"name must be text and extra an object, got {_short_repr(self.name)} / "
                                f"{type(self.extra).__name__}")
        if not TEMPERATURE_RANGE[0] <= self.temperature <= TEMPERATURE_RANGE[1]:
            raise MetadataError(f"temperature must be from {TEMPERATURE_RANGE[0]:g} to {TEMPERATURE_RANGE[1]:g} "
                                f"(a fitted softmax temperature), got {self.temperature!r}")
        if self.resize_policy not in RESIZE_POLICIES:
            raise MetadataError(f"resize_policy must be one of {RESIZE_POLICIES}, got {self.resize_policy!r}")
        if self.input_normalization not in INPUT_NORMALIZATIONS:
            raise MetadataError(f"input_normalization must be one of {INPUT_NORMALIZATIONS}, "
                                f"got {self.input_normalization!r}")
        if self.cam is not None:
            shape = self.cam.get("shape") if isinstance(self.cam, dict) else None
            if (not isinstance(shape, (list, tuple)) or len(shape) != 3 or shape[0] != self.num_classes
                    or not all(isinstance(v, int) and 1 <= v <= 4096 for v in shape)):
                raise MetadataError(f"cam needs a shape [classes, h, w] with {self.num_classes} classes, "
                                    f"got {self.cam!r}")
        if not self.temperature > 0:
            raise MetadataError(f"temperature must be positive, got {self.temperature}")
        if self.domain_guard is not None:
            threshold = self.domain_guard.get("threshold") if isinstance(self.domain_guard, dict) else None
            if not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or not threshold > 0:
                raise MetadataError(f"domain_guard needs a positive, finite threshold, got {self.domain_guard!r}")
        if self.precision not in PRECISIONS:
            raise MetadataError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.format not in FORMATS:
            raise MetadataError(f"format must be one of {FORMATS}, got {self.format!r}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        if not isinstance(data, dict):
            raise MetadataError(f"metadata must be a JSON object, got {type(data).__name__}")
        _check_depth(data)
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [name for name in ("classes", "input_size", "mean", "std") if name not in data]
        if missing:
            raise MetadataError(f"metadata lacks {', '.join(missing)}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, bool) or not isinstance(version, int):
            raise MetadataError(f"schema_version must be a whole number, got {_short_repr(version)}")
        if version > SCHEMA_VERSION:
            raise MetadataError(
                f"metadata schema {version} is newer than this wbc-edge understands ({SCHEMA_VERSION}); upgrade wbc-edge"
            )
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as error:
            raise MetadataError(f"invalid metadata: {error}") from None

    def replace(self, **changes) -> ModelMetadata:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the JSON record atomically (wbc_edge.atomic.write_atomic)."""
        from .atomic import write_atomic

        return write_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelMetadata:
        path = Path(path)
        try:
            if path.stat().st_size > MAX_METADATA_BYTES:
                raise MetadataError(f"{path}: metadata file is larger than {MAX_METADATA_BYTES >> 20} MB; "
                                    "not a wbc-edge metadata record")
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MetadataError(f"{path}: metadata file not found") from None
        except RecursionError:
            raise MetadataError(f"{path}: cannot read metadata (JSON nested too deeply)") from None
        except (OSError, ValueError) as error:
            raise MetadataError(f"{path}: cannot read metadata ({error})") from None
        if not isinstance(data, dict):
            raise MetadataError(f"{path}: metadata must be a JSON object")
        try:
            return cls.from_dict(data)
        except MetadataError as error:
            raise MetadataError(f"{path}: {error}") from None

    def check_compatible(self, other: ModelMetadata, what: str = "model") -> None:
        """Refuses a model whose classes, input size, normalization or resize
        policy differ from ``other`` (for example an artifact and its sidecar)."""
        for name in ("classes", "input_size", "mean", "std", "resize_policy", "input_normalization"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                raise MetadataError(f"{what}: {name} mismatch: {mine} vs {theirs}")


def _check_depth(data: Any) -> None:
    """Refuses JSON nested deeper than MAX_JSON_DEPTH (walked without recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise MetadataError(f"metadata is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def sidecar_path(artifact: str | os.PathLike) -> Path:
    """Where an artifact's metadata lives: ``model.onnx`` -> ``model.json``."""
    return Path(artifact).with_suffix(".json")


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


#: The ONNX ``metadata_props`` key under which the metadata JSON is embedded.
ONNX_METADATA_KEY = "wbc_edge"


def resolve_metadata(artifact: str | os.PathLike, embedded_json: str | None) -> ModelMetadata:
    """An artifact's metadata from its JSON sidecar and/or the copy embedded in
    it. Where both exist they must agree on what the model means."""
    artifact = Path(artifact)
    sidecar = sidecar_path(artifact)
    embedded = None
    if embedded_json:
        try:
            embedded = ModelMetadata.from_dict(json.loads(embedded_json))
        except RecursionError:
            raise MetadataError(f"{artifact}: embedded metadata is unreadable (JSON nested too deeply)") from None
        except (ValueError, MetadataError) as error:
            raise MetadataError(f"{artifact}: embedded metadata is unreadable ({error})") from None
    if sidecar.is_file():
        meta = ModelMetadata.load(sidecar)
        if embedded is not None:
            meta.check_compatible(embedded, what=f"{artifact} vs {sidecar}")
        return meta
    if embedded is not None:
        return embedded
    raise MetadataError(
        f"{artifact}: no metadata: expected {sidecar.name} beside it (classes, input size, normalization); "
        "models made by 'wbc-edge export' have it"
    )
