"""The SDK's front door: cell images in, calibrated predictions out.

    from wbc_edge import Classifier

    with Classifier.load() as classifier:            # the shipped model, on the CPU
        for p in classifier.predict_batch(["a.jpg", "b.png"]):
            print(p.path, p.label, p.confidence, p.review, p.error)

Every input gives exactly one :class:`~wbc_edge.prediction.Prediction`, in input
order; an input that cannot be read gives one with ``error`` set and never
fails the others. Inputs are read and decoded in a thread pool
(:func:`wbc_edge.decode.decode_images`), resized by the one preprocessing
(:func:`wbc_edge.preprocess_batch`) with the model's input size and resize
policy, and run by a backend runner; confidences are
``softmax(logits / temperature)`` with the model's fitted temperature.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .backends import BACKENDS, install_hint, is_model_url, library_available, load_runner, options_for
from .backends.base import BatchJob, Outputs, Runner
from .backends.probe import choose_backend
from .decode import MAX_PIXELS
from .domain_check import cell_verdict
from .errors import MissingDependencyError, WbcEdgeError
from .inputs import DecodedInputs, as_sequence, check_stack, decode_inputs, is_stack
from .metadata import ModelMetadata
from .metrics import softmax
from .models import resolve_model, shipped_variant, verify_shipped, warn_if_inexact_int8
from .prediction import Prediction
from .preprocess import default_num_threads, preprocess_batch
from .review import ReviewPolicy
from .stream import DEFAULT_MAX_WAIT, read_ahead

#: Images per inference call: large enough to keep a CPU or GPU busy, small
#: enough (64 x 128 x 128 x 3 = 3 MB) to bound memory.
DEFAULT_BATCH_SIZE = 64
#: Batches read ahead by predict_stream while one runs.
DEFAULT_PREFETCH = 2
#: The largest batch size: memory grows with the images in flight (about three
#: batches), and larger batches gain nothing on any backend; larger asks are capped.
MAX_BATCH_SIZE = 256



def _capped(batch_size: int) -> int:
    if batch_size <= MAX_BATCH_SIZE:
        return batch_size
    warnings.warn(f"batch_size {batch_size} is more than {MAX_BATCH_SIZE}: using {MAX_BATCH_SIZE} (memory grows "
                  "with the batch, speed does not)", stacklevel=3)
    return MAX_BATCH_SIZE


@dataclass
class _Chunk(DecodedInputs):
    """One batch of inputs on its way through the runner; ``batch`` holds
    the model-ready images of those without error, once made."""

    batch: np.ndarray | None = None
    #: per row of ``batch``: whether cell centring found a white cell (None: not looked for)
    cell_found: np.ndarray | None = None


class Classifier:
    """Classifies cell images with one model on one backend.

    Make one with :meth:`load`; it is thread-safe (several threads may call
    its predict methods at once and get what serial calls give) and holds the
    model until :meth:`close` (or the end of a ``with`` block).
    """

    #: why ``load`` chose the backend (None for a classifier made from a runner)
    backend_reason: str | None = None

    def __init__(self, runner: Runner, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 review: ReviewPolicy | Mapping[str, Any] | None = None, num_threads: int | None = None,
                 model_path: str | os.PathLike | None = None, variant: str | None = None,
                 max_pixels: int | None = MAX_PIXELS):
        """Wraps a loaded runner (``Classifier.load`` is the usual way in).

        Args:
            runner: any :class:`wbc_edge.backends.base.Runner`.
            batch_size: images per inference call.
            review: the review policy (a :class:`ReviewPolicy` or its dict);
                None: the model's default (see :mod:`wbc_edge.review`).
            num_threads: threads for decoding and preprocessing; default:
                every CPU this process may use.
            model_path, variant: where the model came from, for reports.
            max_pixels: images larger than this are refused as possible
                decompression bombs (None: no limit).
        """
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise WbcEdgeError(f"batch_size must be a positive integer, got {batch_size!r}")
        if num_threads is not None and (not isinstance(num_threads, (int, np.integer)) or num_threads < 1):
            raise WbcEdgeError(f"num_threads must be a positive integer, got {num_threads!r}")
        self.runner = runner
        self.metadata: ModelMetadata = runner.metadata
        self.model_path = Path(model_path) if model_path is not None else None
        self.variant = variant
        self.num_threads = int(num_threads or default_num_threads())
        # Each batch is read (decoded, preprocessed) on its stream's share of
        # the threads, while the runner's other streams infer.
        self._read_threads = max(1, self.num_threads // runner.streams)
        self.max_pixels = max_pixels
        limit = runner.max_batch_size
        self.batch_size = _capped(int(min(batch_size, limit) if limit else batch_size))
        self._closed = False
        self.review = review
        runner.check_outputs(where=self.model_path)

    # ----------------------------------------------------------------- loading

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, backend: str = "auto", precision: str | None = None,
             *, batch_size: int = DEFAULT_BATCH_SIZE, device: str | None = None,
             review: ReviewPolicy | Mapping[str, Any] | None = None, num_threads: int | None = None,
             max_pixels: int | None = MAX_PIXELS, streams: int | None = None,
             runner_options: Mapping[str, Any] | None = None) -> Classifier:
        """Loads a model and returns a classifier for it.

        Args:
            model: a model file (``.onnx``, ``.engine``/``.plan``, ``.pt``) with
                its metadata, a model directory, a Triton URL
                (``grpc://host:8001/name``); None: the shipped default model.
            backend: ``"auto"`` (by the file, and for ONNX on a CPU by a cached
                engine probe: :mod:`wbc_edge.backends.probe`, the reason in
                ``backend_reason``), or one of :data:`wbc_edge.backends.BACKENDS`.
            precision: ``"fp32"``, ``"fp16"`` or ``"int8"``: which variant to
                run; None: the fastest shipped one for the backend.
            batch_size: images per inference call.
            device: ``"cpu"`` or ``"cuda"``/``"cuda:N"``; None: the backend's
                default (onnxruntime and torch: the CPU).
            review: the review policy; None: the model's default.
            num_threads: CPU threads for decoding, preprocessing and
                onnxruntime; default: every CPU this process may use.
            max_pixels: larger images are refused as possible decompression
                bombs (default: Pillow's limit, about 89 megapixels).
            streams: the CPU engines (onnxruntime on the CPU, openvino):
                batches inferred at once, the threads shared among them
                (:mod:`wbc_edge.backends.streams`); None: one, every thread
                on one batch (measured best on 2 cores; more streams are for
                filling many cores).
            runner_options: extra keyword arguments for the backend's runner.

        Raises:
            MissingDependencyError: the backend's library is not installed
                (the message has the install command).
            WbcEdgeError: no such model or variant, or an unusable
                combination (the message says what to run instead).
            ModelMismatchError, MetadataError: the model and its metadata disagree.
        """
        if backend != "auto" and backend not in (*BACKENDS, "triton"):
            raise WbcEdgeError(f"unknown backend {backend!r}; choose 'auto' or one of {', '.join(BACKENDS)}, "
                               "or name a model on a Triton server (grpc://host:8001/name)")
        if precision is not None and precision not in ("fp32", "fp16", "int8"):
            raise WbcEdgeError(f"unknown precision {precision!r}; choose fp32, fp16 or int8")
        if backend != "auto" and not library_available(backend):
            raise MissingDependencyError(f"the {backend} backend", install_hint(backend))
        path = resolve_model(model, precision=precision, backend=backend)
        chosen, reason = choose_backend(path, backend, device=device, num_threads=num_threads, streams=streams,
                                        custom_options=bool(runner_options))
        if chosen == "tensorrt" and path.suffix.lower() == ".onnx":
            raise WbcEdgeError(f"TensorRT runs engines built for this GPU, not ONNX files; build one with:\n"
                               f"  wbc-edge build-engine --onnx {path} --out {path.with_suffix('.engine').name}\n"
                               "then pass the .engine file as the model")
        options = options_for(chosen, precision, device, num_threads, streams)
        options.update(runner_options or {})
        variant = shipped_variant(path) if model is None else None
        runner = load_runner(path, backend=chosen, **options)
        try:
            if variant is not None:
                verify_shipped(runner.metadata, variant)
            warn_if_inexact_int8(runner.metadata, chosen)
            classifier = cls(runner, batch_size=batch_size, review=review, num_threads=num_threads,
                             model_path=None if is_model_url(path) else path, variant=variant, max_pixels=max_pixels)
            classifier.backend_reason = reason
            return classifier
        except BaseException:
            runner.close()
            raise

    # -------------------------------------------------------------- properties

    @property
    def classes(self) -> list[str]:
        return list(self.metadata.classes)

    @property
    def backend(self) -> str:
        return self.runner.name

    @property
    def precision(self) -> str:
        return "fp16" if getattr(self.runner, "half", False) else self.metadata.precision

    @property
    def review(self) -> ReviewPolicy:
        """The review policy; assign a :class:`ReviewPolicy` (or its dict, or
        None for the model's default) to change it."""
        return self._review

    @review.setter
    def review(self, policy: ReviewPolicy | Mapping[str, Any] | None) -> None:
        self._review = ReviewPolicy.for_model(policy, self.metadata.classes, self.metadata.extra.get("review"))

    def describe(self) -> dict[str, Any]:
        """What is classifying: for reports and logs."""
        meta = self.metadata
        return {
            "name": meta.name,
            "precision": self.precision,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "classes": self.classes,
            "input_size": list(meta.input_size),
            "resize_policy": meta.resize_policy,
            "temperature": meta.temperature,
            "path": str(self.model_path) if self.model_path else None,
            "variant": self.variant,
            "runner": self.runner.describe(),
        }

    def __repr__(self) -> str:
        where = self.variant or (self.model_path.name if self.model_path else "runner")
        return f"Classifier({self.metadata.name} [{where}], {self.precision}, {self.backend})"

    # ------------------------------------------------------------- predicting

    def predict(self, image, *, cam: bool = False) -> Prediction:
        """One input (path, bytes, file object, PIL image or uint8 array)."""
        return self.predict_batch([image], cam=cam)[0]

    def predict_batch(self, images, *, cam: bool = False) -> list[Prediction]:
        """One :class:`Prediction` per input, in input order.

        Args:
            images: a sequence of inputs, each a file path, encoded bytes, a
                binary file object, a PIL image or a uint8 numpy array
                ``(h, w)``, ``(h, w, 1|3|4)`` (gray, RGB, RGBA; any size); or
                one stacked uint8 array ``(n, h, w, 3)`` (the zero-copy path:
                frames already at the model's input size go to the runner
                as they are, others straight into preprocessing).
            cam: also give each cell's class activation maps
                (``Prediction.cam``); the model must have them
                (``metadata.cam``, as exported models do).

        Inputs are processed ``batch_size`` at a time, so memory stays bounded
        whatever the length of the list.
        """
        self._check_open()
        self._check_cam(cam)
        if is_stack(images):
            return list(self._run(self._stack_chunks(images, self.batch_size), cam))
        items = as_sequence(images, "predict_batch")
        # A batch smaller than the streams can take is split among them.
        size = max(1, min(self.batch_size, math.ceil(len(items) / self.runner.streams)))
        return list(self._run((self._read(items[i:i + size]) for i in range(0, len(items), size)), cam))

    def predict_stream(self, inputs: Iterable, batch_size: int | None = None,
                       prefetch: int = DEFAULT_PREFETCH, *, cam: bool = False,
                       max_wait: float | None = DEFAULT_MAX_WAIT) -> Iterator[Prediction]:
        """Predictions for any iterable of inputs, yielded in input order as
        they are ready. Reading, decoding and preprocessing of the next
        ``prefetch`` batches run in a thread pool while the runner infers
        (one batch per stream of a CPU engine, see ``Classifier.load``), so
        at most ``prefetch`` + streams batches are in memory (and one being
        gathered). With the same batch size, gives what :meth:`predict_batch`
        gives. With more than one stream, a batch's predictions come once the
        next batch has been read (or the source has ended): for a slow
        source, keep one stream (the default).

        A slow source (a camera) is not kept waiting for a full batch: a
        partial batch goes on ``max_wait`` seconds (default 0.1) after its
        first input arrived (None: only full batches; see
        :mod:`wbc_edge.stream`).

        The arguments are checked at the call; the inputs are read as the
        generator is consumed.
        """
        self._check_open()
        self._check_cam(cam)
        size = self.batch_size if batch_size is None else int(batch_size)
        if size < 1 or prefetch < 1:
            raise WbcEdgeError(f"batch_size and prefetch must be positive, got {batch_size!r} and {prefetch!r}")
        if max_wait is not None and (not isinstance(max_wait, (int, float)) or not max_wait >= 0):
            raise WbcEdgeError(f"max_wait must be None or a number of seconds >= 0, got {max_wait!r}")
        if self.runner.max_batch_size:
            size = min(size, self.runner.max_batch_size)
        size = _capped(size)
        if is_stack(inputs):
            check_stack(inputs)
            return self._run(self._stack_chunks(inputs, size), cam)
        if isinstance(inputs, (str, bytes, os.PathLike, Image.Image)) or not hasattr(inputs, "__iter__"):
            raise TypeError(f"predict_stream takes an iterable of inputs, got {type(inputs).__name__}")
        return self._run(read_ahead(self._read, iter(inputs), size, prefetch, max_wait), cam)

    # --------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Frees the model (sessions, device memory). Idempotent; call it
        once no other thread is predicting."""
        if not self._closed:
            self._closed = True
            self.runner.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- inside

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Classifier is closed")

    def _check_cam(self, cam: bool) -> None:
        if cam and self.metadata.cam is None:
            where = self.model_path or self.runner.describe()
            raise WbcEdgeError(f"{where}: this model has no class activation maps (metadata 'cam'); "
                               "export its checkpoint again with 'wbc-edge export' (maps are on by default)")

    def _read(self, items: Sequence) -> _Chunk:
        """Decodes a group of inputs (thread pool) and, unless the runner
        fills its own input memory, preprocesses them here (in predict_stream's
        readers, while the runner works on earlier batches)."""
        decoded = decode_inputs(items, num_threads=self._read_threads, max_pixels=self.max_pixels,
                                reduce_to=self.metadata.input_size)
        chunk = _Chunk(decoded.names, decoded.images, decoded.errors)
        if not self.runner.fills_input_memory:
            chunk.batch = self._preprocess(chunk, out=None)
        return chunk

    def _preprocess(self, chunk: _Chunk, out: np.ndarray | None) -> np.ndarray | None:
        """The chunk's readable images as one model-ready batch (in ``out``
        when given). An image the C++ preprocessing refuses becomes an error
        for that input alone."""
        images = [image for image in chunk.images if image is not None]
        if not images:
            return None
        size, policy = self.metadata.input_size, self.metadata.resize_policy
        boxes = np.zeros((len(images), 5), np.float32) if policy == "cell_center" else None
        try:
            batch = preprocess_batch(images, size, out=None if out is None else out[:len(images)],
                                     num_threads=self._read_threads, policy=policy, boxes=boxes)
            chunk.cell_found = None if boxes is None else boxes[:, 4] > 0
            # resized: the decoded images go now, not when the batch is answered
            # (only whether each input had one is used from here on)
            chunk.images = [None if image is None else True for image in chunk.images]
            return batch
        except (TypeError, ValueError):
            refused = 0
            for i, image in enumerate(chunk.images):  # find the culprit(s); keep the rest
                if image is not None:
                    try:
                        preprocess_batch([image], size, num_threads=1, policy=policy)
                    except (TypeError, ValueError) as error:
                        chunk.images[i], chunk.errors[i] = None, f"cannot be preprocessed ({error})"
                        refused += 1
            if not refused:
                raise
            return self._preprocess(chunk, out)

    def _stack_chunks(self, stack: np.ndarray, size: int) -> Iterator[_Chunk]:
        """Batches of a stacked (n, h, w, c) uint8 array, without copies where
        the frames already have the model's input form."""
        check_stack(stack)
        # frames of the input size need no resizing, but cell centring still crops them
        ready = stack.shape[1:] == (*self.metadata.input_size, 3) and self.metadata.resize_policy != "cell_center"
        for start in range(0, len(stack), size):
            frames = stack[start:start + size]
            count = len(frames)
            chunk = _Chunk([None] * count, list(frames), [None] * count)
            if ready:
                chunk.batch = np.ascontiguousarray(frames)
            elif not self.runner.fills_input_memory:
                chunk.batch = self._preprocess(chunk, out=None)
            yield chunk

    def _job(self, chunk: _Chunk) -> BatchJob:
        """A chunk as a runner's job: its images, made where the runner wants them."""
        def fill(out: np.ndarray | None) -> np.ndarray | None:
            if chunk.batch is None:
                return self._preprocess(chunk, out)
            if out is None:
                return chunk.batch
            np.copyto(out[:len(chunk.batch)], chunk.batch)
            return out[:len(chunk.batch)]

        count = len(chunk.batch) if chunk.batch is not None else sum(image is not None for image in chunk.images)
        return BatchJob(count, fill, context=chunk)

    def _run(self, chunks: Iterable[_Chunk], cam: bool = False) -> Iterator[Prediction]:
        """Predictions for a sequence of chunks, in order: the runner takes
        them as jobs (and decides how many are in flight)."""
        def jobs() -> Iterator[BatchJob]:
            for chunk in chunks:
                self._check_open()
                yield self._job(chunk)

        batches = self.runner.run_batches(jobs())
        try:
            for job, outputs in batches:
                yield from self._predictions(job.context, outputs, cam)
        finally:  # the consumer stopped early, or something failed: the runner frees what it holds
            getattr(batches, "close", lambda: None)()
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _predictions(self, chunk: _Chunk, outputs: Outputs | None, cam: bool = False) -> list[Prediction]:
        results: list[Prediction] = []
        classes, policy, guard = self.metadata.classes, self._review, self.metadata.domain_guard
        if outputs is not None:
            logits = outputs["logits"]
            scores = outputs["ood_score"][:, 0] if guard is not None else None
            maps = outputs["cam"].reshape(-1, *self.metadata.cam_shape).astype(np.float32) if cam else None
            probabilities = softmax(logits, self.metadata.temperature)
            finite = np.isfinite(logits).all(axis=1)
            rows = iter(range(len(logits)))
        for name, image, error in zip(chunk.names, chunk.images, chunk.errors):
            if image is None:
                results.append(Prediction.failed(name, error or "could not be read"))
                continue
            row = next(rows)
            if not finite[row]:
                results.append(Prediction.failed(name, "the model produced non-finite outputs (NaN or inf) "
                                                       "for this image; try the fp32 model"))
                continue
            p = probabilities[row]
            best = int(p.argmax())
            label, confidence = classes[best], float(p[best])
            review, reason = policy.decide(label, confidence)
            found = chunk.cell_found is None or bool(chunk.cell_found[row])
            score, ood, why = cell_verdict(None if scores is None else float(scores[row]), found, guard)
            if ood:  # an unfamiliar cell is always reviewed, and says why first
                review, reason = True, why if reason is None else f"{why}; {reason}"
            results.append(Prediction(
                path=name, label=label, confidence=confidence,
                probabilities={c: float(v) for c, v in zip(classes, p)},
                review=review, review_reason=reason, ood_score=score, out_of_distribution=ood,
                cam=None if maps is None else maps[row].copy()))
        return results


