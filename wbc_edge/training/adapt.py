"""Adapting a model to a new lab from that lab's own cells (``wbc-edge adapt``).

The method, chosen by measurement (MODEL_CARD.md, "Adapting to a lab"):

* **Fine-tuning with BatchNorm frozen.** Every weight is tuned with a small
  learning rate while the normalization statistics stay those of the large
  training set (a few dozen cells estimate them badly; re-estimating them on
  the new lab alone, AdaBN, did not help in our measurement and cost the
  original lab accuracy).
* **Replay of the original lab.** Each step trains on as many shipped PBC
  reference cells (``wbc_edge/models/reference_cells``, role ``replay``) as
  new-lab cells, so the classes the new lab did not label, and the original
  lab's look, are kept.
* **Pseudo-labels for unlabelled cells**: the base model's most confident
  predictions on the clean image, at most a few per class, are the targets
  of augmented views (consistency, as in FixMatch); the rest are left out.
* Temperature refitted on held-out labelled cells where there are enough;
  the domain guard refitted on the adapted network's features of the
  replay and new-lab cells (a mean per class and lab), its threshold from
  out-of-fold scores of cells it was not fitted on.
"""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wbc_edge.domain_check import DEFAULT_SHIFT_FRACTION
from wbc_edge.errors import WbcEdgeError
from wbc_edge.metadata import sha256_of

from ..datasets import ImageSet, Sample, load_images, read_samples
from ..metrics import classification_report, softmax
from .augment import AugmentConfig, augment
from .domain_guard import DomainGuard, fit_guard, stage_features
from .temperature import fit_temperature

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "models" / "reference_cells"
#: fewest cells worth adapting to (a run below refuses and says so)
MIN_LABELED, MIN_UNLABELED, MIN_PER_CLASS = 8, 32, 2
#: with at least HOLDOUT_FROM labelled cells, this share is held out to measure before/after
HOLDOUT_FROM, HOLDOUT_FRACTION = 60, 0.2
#: pseudo-labels: per predicted class, at most this many of the most confident
#: cells whose calibrated confidence reaches PSEUDO_CONFIDENCE
PSEUDO_CONFIDENCE, PSEUDO_PER_CLASS = 0.5, 10
#: guard: shrinkage of its covariance (fewer cells than for training), threshold quantile
GUARD_SHRINKAGE, GUARD_QUANTILE = 0.5, 0.975


class AdaptError(WbcEdgeError):
    """Adaptation inputs that cannot be used, and why."""


@dataclass
class AdaptConfig:
    epochs: int = 30          # passes over the new lab's cells
    batch_size: int = 32      # new-lab cells per step (and as many replayed PBC cells)
    lr: float = 3e-4
    min_steps: int = 40
    max_steps: int = 240
    seed: int = 0
    progress: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def reference_samples(role: str, folder: Path = REFERENCE_DIR) -> list[Sample]:
    """The shipped PBC reference cells of one role (``replay`` or ``check``)."""
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        raise AdaptError(f"{manifest}: the shipped reference cells are missing; reinstall wbc-edge")
    with open(manifest, newline="") as f:
        return [Sample(folder / row["path"], row["label"]) for row in csv.DictReader(f) if row["role"] == role]


def read_corrections(path: Path) -> tuple[list[Sample], list[dict]]:
    """Samples from a review page's ``corrections.csv`` (label: ``corrected``),
    and the rows refused (file gone, or its content changed since review)."""
    samples, refused = [], []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            image = Path(row.get("path") or "")
            if not image.is_absolute():
                image = path.parent / image
            label = (row.get("corrected") or "").strip()
            if not image.is_file():
                refused.append({"line": line, "path": str(image), "reason": "file not found"})
            elif not label:
                refused.append({"line": line, "path": str(image), "reason": "no corrected label"})
            elif row.get("sha256") and sha256_of(image) != row["sha256"]:
                refused.append({"line": line, "path": str(image),
                                "reason": "sha256 differs from the reviewed image (the file changed)"})
            else:
                samples.append(Sample(image, label))
    return samples, refused


def read_labeled(data: str | Path, manifest: str | Path | None) -> tuple[list[Sample], list[dict], str]:
    """(samples, refused rows, kind) from a folder per class, a manifest, or a corrections CSV."""
    data = Path(data)
    if data.is_file() and data.suffix.lower() == ".csv":
        with open(data, newline="") as f:
            header = next(csv.reader(f), [])
        if "corrected" in header:
            samples, refused = read_corrections(data)
            return samples, refused, "corrections"
        return read_samples(data.parent, data), [], "manifest"
    if not data.is_dir():
        raise AdaptError(f"{data}: not found (--labeled takes a folder per class, a manifest CSV, "
                         "or the review page's corrections.csv)")
    return read_samples(data, manifest), [], "manifest" if manifest else "folder per class"


def read_unlabeled(folder: str | Path, classes: Sequence[str]) -> list[Sample]:
    from wbc_edge.files import find_images

    folder = Path(folder)
    if not folder.is_dir():
        raise AdaptError(f"{folder}: --unlabeled takes a folder of cell images (flat or nested)")
    return [Sample(p, classes[0]) for p in find_images(folder)]  # the label is a placeholder


def check_labeled(samples: list[Sample], classes: Sequence[str]) -> None:
    unknown = sorted({s.label for s in samples} - set(classes))
    if unknown:
        raise AdaptError(f"labels not among the model's classes ({', '.join(classes)}): {', '.join(unknown)}; "
                         "nothing was written")
    counts = {c: sum(s.label == c for s in samples) for c in classes}
    lonely = [c for c, n in counts.items() if 0 < n < MIN_PER_CLASS]
    if lonely:
        raise AdaptError(f"classes with fewer than {MIN_PER_CLASS} labelled cells: "
                         f"{', '.join(f'{c} ({counts[c]})' for c in lonely)}; label more of them or leave them out")


def holdout_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a stratified HOLDOUT_FRACTION when there are
    HOLDOUT_FROM labelled cells or more, else everything trains."""
    index = np.arange(len(labels))
    if len(labels) < HOLDOUT_FROM:
        return index, index[:0]
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        rows = rng.permutation(index[labels == c])
        held.extend(rows[:round(len(rows) * HOLDOUT_FRACTION)].tolist())
    held = np.array(sorted(held), dtype=np.int64)
    return np.setdiff1d(index, held), held


@torch.no_grad()
def logits_of(model, images: np.ndarray, batch: int = 128) -> np.ndarray:
    out = [model.net(model.normalize(torch.from_numpy(images[i:i + batch]))).numpy()
           for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, model.net.fc.out_features), np.float32)


def pseudo_labels(model, images: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(labels, kept mask): per predicted class, the base model's
    PSEUDO_PER_CLASS most confident predictions that reach PSEUDO_CONFIDENCE.
    The cap keeps the classes balanced: a model that leans towards one class
    in a new lab would otherwise train itself further that way (measured:
    MODEL_CARD.md)."""
    p = softmax(logits_of(model, images), temperature)
    guessed, confidence = p.argmax(1), p.max(1)
    kept = np.zeros(len(images), bool)
    for c in np.unique(guessed):
        rows = np.flatnonzero((guessed == c) & (confidence >= PSEUDO_CONFIDENCE))
        kept[rows[np.argsort(-confidence[rows], kind="stable")][:PSEUDO_PER_CLASS]] = True
    return guessed, kept


def fine_tune(model, images: np.ndarray, labels: np.ndarray, replay: ImageSet, cfg: AdaptConfig):
    """Every weight tuned, BatchNorm statistics frozen (the network in eval mode),
    each step on new-lab cells and as many replayed reference cells."""
    model = copy.deepcopy(model)
    net, normalize = model.net, model.normalize
    params = [p for p in net.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    steps = int(min(cfg.max_steps, max(cfg.min_steps, math.ceil(cfg.epochs * len(images) / cfg.batch_size))))
    gen = torch.Generator().manual_seed(cfg.seed)
    net.eval()
    bar = tqdm(range(steps), desc="adapting", unit="step", disable=not cfg.progress, leave=False)
    for _ in bar:
        pick = torch.randint(0, len(images), (cfg.batch_size,), generator=gen).numpy()
        back = torch.randint(0, len(replay), (cfg.batch_size,), generator=gen).numpy()
        x = torch.cat([augment(torch.from_numpy(images[pick]), cfg.augment, gen),
                       augment(torch.from_numpy(replay.images[back]), cfg.augment, gen)])
        y = torch.from_numpy(np.concatenate([labels[pick], replay.labels[back]]))
        loss = F.cross_entropy(net(normalize.standardize(x)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    for p in params:
        p.requires_grad_(False)
    return model.eval(), steps


def refit_guard(model, replay: tuple[np.ndarray, np.ndarray], target: tuple[np.ndarray, np.ndarray],
                check: np.ndarray, num_classes: int, base_record: dict | None, seed: int,
                folds: int = 5) -> tuple[dict, dict]:
    """(guard state, metadata record): one mean per class and lab (PBC
    reference cells, the new lab's cells) and a shared shrunk covariance.
    The threshold is a quantile of scores of cells the means did not see:
    the PBC check cells, and each new-lab cell scored by statistics fitted
    without its fold (a few dozen cells place a class mean loosely, so
    in-sample scores would set it too low)."""
    stages = tuple((base_record or {}).get("stages", (3, 4)))
    features = lambda images: stage_features(model.net, model.normalize, images, stages)  # noqa: E731
    replay_f, target_f, check_f = features(replay[0]), features(target[0]), features(check)

    def fitted(rows: np.ndarray):
        return fit_guard(np.concatenate([replay_f, target_f[rows]]),
                         np.concatenate([replay[1], target[1][rows] + num_classes]), 2 * num_classes, stages,
                         shrinkage=GUARD_SHRINKAGE)

    order = np.random.default_rng(seed).permutation(len(target_f))
    held = [fitted(np.setdiff1d(order, part)).score(target_f[part])
            for part in np.array_split(order, min(folds, len(order))) if len(part)]
    stats = fitted(order)
    scores = np.concatenate([*held, stats.score(check_f)])
    threshold = float(np.quantile(scores, GUARD_QUANTILE))
    record = {**(base_record or {}), "method": "mahalanobis", "stages": list(stages),
              "threshold": round(threshold, 6), "quantile": GUARD_QUANTILE,
              "expected_fraction": round(1 - GUARD_QUANTILE, 4),
              "fitted_on": {"means": "per class and lab (PBC reference cells, the new lab's cells)",
                            "images": int(len(replay_f) + len(target_f)),
                            "threshold_from": f"{len(check_f)} PBC check cells and {len(target_f)} new-lab cells, "
                                              f"{min(folds, len(order))}-fold out of sample",
                            "shrinkage": GUARD_SHRINKAGE}}
    record.setdefault("shift_fraction", DEFAULT_SHIFT_FRACTION)
    return DomainGuard.from_statistics(stats).state(), record


def scores_of(model, images: ImageSet, temperature: float, classes: Sequence[str]) -> dict | None:
    if len(images) == 0:
        return None
    report = classification_report(images.labels, softmax(logits_of(model, images.images), temperature), classes)
    present = sorted(set(images.labels.tolist()))
    return {"cells": len(images), "accuracy": report["accuracy"], "balanced_accuracy": report["balanced_accuracy"],
            "ece": report["ece"], "classes_present": [classes[i] for i in present]}


def load_set(samples: list[Sample], classes, meta, desc: str, progress: bool) -> ImageSet:
    return load_images(samples, classes, meta.input_size, meta.resize_policy, progress=progress, desc=desc)


def subset(images: ImageSet, index: np.ndarray) -> ImageSet:
    return ImageSet(images=images.images[index], labels=images.labels[index],
                    paths=[images.paths[i] for i in index], classes=images.classes)


def adapt(out: str | Path, *, labeled: str | Path | None = None, manifest: str | Path | None = None,
          unlabeled: str | Path | None = None, model: str | Path | None = None, force: bool = False,
          cfg: AdaptConfig | None = None, say=print) -> dict:
    """Adapts ``model`` (default: the shipped one) to the cells given and
    writes the model directory ``out`` with ``adapt-report.json`` and
    ``adapt-report.txt``. Returns the report."""
    import json
    import platform
    import time

    from wbc_edge import __version__
    from wbc_edge.atomic import write_atomic
    from wbc_edge.calibration.dataset import CalibrationSet
    from wbc_edge.export import model_directory
    from wbc_edge.models import resolve_model

    from .checkpoint import load_deployable, save_checkpoint

    cfg = cfg or AdaptConfig()
    started = time.time()
    if labeled is None and unlabeled is None:
        raise AdaptError("give --labeled cells, --unlabeled cells, or both")
    model_directory.prepare_target(out, force)
    torch.manual_seed(cfg.seed)
    base_path = resolve_model(model, backend="torch")
    base, meta = load_deployable(base_path)
    classes = meta.classes

    samples, refused, kind = ([], [], None) if labeled is None else read_labeled(labeled, manifest)
    if labeled is not None:
        check_labeled(samples, classes)
    loose = [] if unlabeled is None else read_unlabeled(unlabeled, classes)
    lab = load_set(samples, classes, meta, "labelled cells", cfg.progress)
    unl = load_set(loose, classes, meta, "unlabelled cells", cfg.progress)
    skipped = [{"path": p, "reason": r} for p, r in lab.errors + unl.errors]
    if labeled is not None and len(lab) < MIN_LABELED:
        raise AdaptError(f"{len(lab)} readable labelled cells; adaptation needs at least {MIN_LABELED} "
                         f"(about 10 per class is a good start)")
    if labeled is None and len(unl) < MIN_UNLABELED:
        raise AdaptError(f"{len(unl)} readable unlabelled cells; adaptation needs at least {MIN_UNLABELED} "
                         "(200 or more is better), or some labelled ones")
    replay = load_set(reference_samples("replay"), classes, meta, "reference cells", False)
    check = load_set(reference_samples("check"), classes, meta, "reference cells", False)

    train_idx, held_idx = holdout_split(lab.labels, cfg.seed)
    lab_train, lab_held = subset(lab, train_idx), subset(lab, held_idx)
    images, labels, paths = [lab_train.images], [lab_train.labels], list(lab_train.paths)
    pseudo = {}
    if len(unl):
        guessed, kept = pseudo_labels(base, unl.images, meta.temperature)
        images.append(unl.images[kept])
        labels.append(guessed[kept])
        paths += [p for p, k in zip(unl.paths, kept) if k]
        pseudo = {"cells": len(unl), "kept": int(kept.sum()), "confidence": PSEUDO_CONFIDENCE,
                  "max_per_class": PSEUDO_PER_CLASS,
                  "per_class": {classes[c]: int((guessed[kept] == c).sum()) for c in range(len(classes))}}
        if kept.sum() == 0:
            raise AdaptError(f"the base model is confident (>= {PSEUDO_CONFIDENCE}) on none of the "
                             f"{len(unl)} unlabelled cells; label some cells (--labeled) instead")
    images, labels = np.concatenate(images), np.concatenate(labels)
    say(f"adapting {base_path.name} to {len(images)} cells of the new lab "
        f"({len(lab_train)} labelled, {pseudo.get('kept', 0)} pseudo-labelled), {len(lab_held)} held out")
    adapted, steps = fine_tune(base, images, labels, replay, cfg)

    temperature, temperature_from = meta.temperature, "base model (too few held-out cells to refit)"
    if len(lab_held) >= 10:
        temperature = fit_temperature(logits_of(adapted, lab_held.images), lab_held.labels)
        temperature_from = f"{len(lab_held)} held-out labelled cells"
    guard_state, guard_record = refit_guard(adapted, (replay.images, replay.labels), (images, labels),
                                            np.concatenate([check.images, lab_held.images]), len(classes),
                                            meta.domain_guard, cfg.seed)

    digests: dict[str, str] = {}

    def digest(path: str) -> str:  # each image is hashed once, for provenance and calibration record
        if path not in digests:
            digests[path] = sha256_of(path)
        return digests[path]

    report = {
        "base_model": {"path": str(base_path), "sha256": sha256_of(base_path)},
        "method": "fine-tuning, BatchNorm frozen, replay of PBC reference cells"
                  + (", pseudo-labels of confident unlabelled cells" if len(unl) else ""),
        "labeled": {"source": None if labeled is None else str(labeled), "kind": kind, "cells": len(lab),
                    "trained_on": len(lab_train), "held_out": len(lab_held), "refused_rows": refused,
                    "per_class": {c: int((lab.labels == i).sum()) for i, c in enumerate(classes)}},
        "unlabeled": {"source": None if unlabeled is None else str(unlabeled), **pseudo},
        "skipped_images": skipped,
        "steps": steps, "seed": cfg.seed, "lr": cfg.lr, "batch_size": cfg.batch_size,
        "temperature": {"value": temperature, "from": temperature_from},
        "domain_guard": guard_record,
        "before_after": {
            "new_lab_held_out": {"before": scores_of(base, lab_held, meta.temperature, classes),
                                 "after": scores_of(adapted, lab_held, temperature, classes)},
            "pbc_reference_check_cells": {"before": scores_of(base, check, meta.temperature, classes),
                                          "after": scores_of(adapted, check, temperature, classes)},
        },
    }
    adaptation = {
        "base_sha256": report["base_model"]["sha256"], "method": report["method"], "seed": cfg.seed,
        "steps": steps, "versions": {"wbc_edge": __version__, "torch": str(torch.__version__),
                                     "python": platform.python_version()},
        "images": [{"path": p, "sha256": digest(p), "use": "labelled"} for p in lab_train.paths]
                  + [{"path": p, "sha256": digest(p), "use": "held out"} for p in lab_held.paths]
                  + [{"path": p, "sha256": digest(p), "use": "unlabelled"} for p in unl.paths],
    }
    new_meta = meta.replace(temperature=temperature, domain_guard=guard_record, cam=None, format="checkpoint",
                            source_sha256=report["base_model"]["sha256"], quantization=None, tensorrt=None,
                            extra={**{k: v for k, v in meta.extra.items()
                                      if k not in ("weight_storage", "exporter", "opset", "adaptation")},
                                   "adaptation": adaptation})
    calibration = np.concatenate([images, replay.images])
    calibration_paths = [*paths, *replay.paths]
    calibration_set = CalibrationSet(
        images=calibration, paths=calibration_paths,
        labels=[classes[i] for i in np.concatenate([labels, replay.labels])],
        sha256=[digest(p) for p in calibration_paths])

    def fill(folder: Path) -> None:
        checkpoint = folder / "adapted.pt"
        save_checkpoint({"model": adapted.net.state_dict(), "meta": new_meta.to_dict(),
                         "domain_guard": guard_state}, checkpoint)
        report["variants"] = model_directory.write_variants(folder, checkpoint, calibration_set, REFERENCE_DIR,
                                                            Path(labeled or unlabeled), cfg.progress)
        checkpoint.unlink()
        report["seconds"] = round(time.time() - started, 1)
        write_atomic(folder / "adapt-report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
        write_atomic(folder / "adapt-report.txt", summary_text(report))

    model_directory.build(out, fill, force)
    return report


def summary_text(report: dict) -> str:
    """The report in a few lines, for people."""
    def line(name: str, pair: dict) -> str:
        b, a = pair["before"], pair["after"]
        if not b:
            return f"  {name}: none (too few labelled cells to hold some out)"
        return (f"  {name} ({b['cells']} cells; {', '.join(b['classes_present'])}): balanced accuracy "
                f"{b['balanced_accuracy']:.3f} -> {a['balanced_accuracy']:.3f}, ECE {b['ece']:.3f} -> {a['ece']:.3f}")
    lab, unl = report["labeled"], report["unlabeled"]
    lines = [f"adapted {Path(report['base_model']['path']).name} ({report['method']})",
             f"  cells: {lab['trained_on']} labelled trained on, {lab['held_out']} held out, "
             f"{unl.get('kept', 0)} of {unl.get('cells', 0)} unlabelled pseudo-labelled; "
             f"{len(report['skipped_images'])} unreadable skipped, {len(lab['refused_rows'])} rows refused",
             line("new lab, held out", report["before_after"]["new_lab_held_out"]),
             line("PBC reference cells (original lab)", report["before_after"]["pbc_reference_check_cells"]),
             f"  temperature {report['temperature']['value']:.3f} ({report['temperature']['from']}); "
             f"domain guard threshold {report['domain_guard']['threshold']:.3f}",
             f"  {report['steps']} steps, seed {report['seed']}, {report.get('seconds', 0):.0f} s"]
    return "\n".join(lines) + "\n"
