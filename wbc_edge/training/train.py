"""Training a ResNet-18 on cell images, with resumable checkpoints.

Every epoch writes ``last.pt`` atomically (model, optimizer, scheduler, epoch,
RNG states, classes and preprocessing); the best epoch by validation balanced
accuracy is kept apart in ``best.pt``; ``history.json`` records every epoch.
After the last epoch a temperature is fitted on the validation split and stored
in ``best.pt``'s metadata, so every backend reports calibrated confidences.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wbc_edge.domain_check import DEFAULT_SHIFT_FRACTION
from wbc_edge.metadata import ModelMetadata
from wbc_edge.preprocess import default_num_threads

from ..datasets import DatasetError, ImageSet, Sample, class_names, load_images, read_samples
from ..metrics import classification_report, expected_calibration_error, softmax
from .augment import AugmentConfig, augment
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .deployable import DeployableModel, Normalize
from .domain_guard import DEFAULT_STAGES, DomainGuard, fit_guard, stage_features
from .resnet import resnet18
from .temperature import fit_temperature

BALANCE_MODES = ("none", "weights", "sampling")


@dataclass
class TrainConfig:
    data: str
    out: str
    manifest: str | None = None
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-5
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    balance: str = "weights"
    input_size: tuple[int, int] = (128, 128)
    resize_policy: str = "cell_center"
    norm: str = "batch"                      # "batch" or "group" (see resnet.NORM_LAYERS)
    input_normalization: str = "per_image"   # "dataset" or "per_image" (see deployable)
    #: more labelled sources, (data, manifest or None), trained on with the first
    extra_data: list = field(default_factory=list)
    #: labels whose rows are left out (a source's "mixed" or "unknown" pictures)
    ignore_labels: tuple = ()
    val_fraction: float = 0.1  # used when the data has no 'val' split
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    progress: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def split_samples(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, val). A manifest's 'train'/'val' splits are used as they are (the
    'test' split is never touched); otherwise a stratified, seeded split."""
    if any(s.split for s in samples):
        train = [s for s in samples if s.split == "train"]
        val = [s for s in samples if s.split == "val"]
        if not train or not val:
            raise DatasetError("the manifest needs both 'train' and 'val' rows in its split column")
        return train, val
    rng = random.Random(seed)
    train, val = [], []
    for label in class_names(samples):
        group = [s for s in samples if s.label == label]
        rng.shuffle(group)
        n_val = max(1, round(len(group) * val_fraction)) if len(group) > 1 else 0
        val += group[:n_val]
        train += group[n_val:]
    return train, val


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NHWC images, on the [0, 1] scale."""
    x = images.reshape(-1, 3).astype(np.float64) / 255.0
    return x.mean(axis=0).round(4).tolist(), x.std(axis=0).round(4).tolist()


def read_sources(cfg: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    """(train, val) samples of every source, ignored labels left out."""
    train, val = [], []
    for data, manifest in [(cfg.data, cfg.manifest), *[tuple(x) for x in cfg.extra_data]]:
        samples = [s for s in read_samples(data, manifest) if s.label not in cfg.ignore_labels]
        t, v = split_samples(samples, cfg.val_fraction, cfg.seed)
        train += t
        val += v
    return train, val


@torch.no_grad()
def net_logits(net: torch.nn.Module, images: np.ndarray, mean, std, device: str = "cpu",
               batch_size: int = 256, input_normalization: str = "dataset") -> np.ndarray:
    """Logits for uint8 NHWC images through the deployed input path."""
    model = DeployableModel(net, mean, std, input_normalization).to(device).eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start:start + batch_size]).to(device)
        out.append(model(batch).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _lr_lambda(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _write_json(path: Path, data) -> None:
    from wbc_edge.atomic import write_atomic

    write_atomic(path, json.dumps(data, indent=2) + "\n")


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Runs (or resumes) training; returns the summary also written to
    ``<out>/summary.json``."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(default_num_threads())
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.balance not in BALANCE_MODES:
        raise ValueError(f"balance must be one of {BALANCE_MODES}")

    train_samples, val_samples = read_sources(cfg)
    classes = class_names(train_samples)
    size = tuple(cfg.input_size)
    train_set = load_images(train_samples, classes, size, cfg.resize_policy, progress=cfg.progress,
                            desc="reading train images")
    val_set = load_images(val_samples, classes, size, cfg.resize_policy, progress=cfg.progress,
                          desc="reading val images")
    skipped = train_set.errors + val_set.errors
    if skipped:
        print(f"skipped {len(skipped)} unreadable images:")
        for path, reason in skipped:
            print(f"  {path}: {reason}")
    if len(train_set) < cfg.batch_size:
        raise DatasetError(f"only {len(train_set)} readable training images, fewer than one batch ({cfg.batch_size})")

    mean, std = channel_stats(train_set.images)
    meta = ModelMetadata(classes=classes, input_size=size, mean=mean, std=std, resize_policy=cfg.resize_policy,
                         input_normalization=cfg.input_normalization, format="checkpoint",
                         extra={"architecture": "resnet18", "norm": cfg.norm})

    device = torch.device(cfg.device)
    model = resnet18(num_classes=len(classes), norm=cfg.norm).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_set) // cfg.batch_size
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(max(1, int(cfg.warmup_epochs * steps_per_epoch)), cfg.epochs * steps_per_epoch))

    counts = train_set.class_counts().astype(np.float64)
    class_weights = None
    if cfg.balance == "weights":
        class_weights = torch.tensor(counts.sum() / (len(classes) * np.maximum(counts, 1)), dtype=torch.float32,
                                     device=device)
    sample_weights = torch.from_numpy(1.0 / np.maximum(counts, 1))[torch.from_numpy(train_set.labels)]

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    start_epoch = 0
    if cfg.resume and (out / "last.pt").exists():
        state = load_checkpoint(out / "last.pt")
        if state.get("meta", {}).get("classes") != classes:
            raise CheckpointError(f"{out / 'last.pt'}: its classes differ from the data's; cannot resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        start_epoch, history, best = state["epoch"], state["history"], state.get("best")
        print(f"resuming from {out / 'last.pt'} after epoch {start_epoch}")

    normalize = Normalize(mean, std, cfg.input_normalization).to(device)
    config_record = {**asdict(cfg), "input_size": list(size), "extra_data": [list(x) for x in cfg.extra_data],
                     "ignore_labels": list(cfg.ignore_labels)}
    for epoch in range(start_epoch, cfg.epochs):
        # One generator per epoch, seeded from (seed, epoch): data order and
        # augmentation are the same whether or not the run was resumed.
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        if cfg.balance == "sampling":
            order = torch.multinomial(sample_weights, len(train_set), replacement=True, generator=gen)
        else:
            order = torch.randperm(len(train_set), generator=gen)
        model.train()
        started = time.time()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not cfg.progress)
        for step in bar:
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size].numpy()
            x = augment(torch.from_numpy(train_set.images[idx]), cfg.augment, gen).to(device)
            x = normalize.standardize(x).contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(train_set.labels[idx]).to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y, weight=class_weights, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        train_seconds = time.time() - started

        val_logits = net_logits(model, val_set.images, mean, std, cfg.device,
                                input_normalization=cfg.input_normalization)
        report = classification_report(val_set.labels, softmax(val_logits), classes)
        entry = {
            "epoch": epoch + 1,
            "lr": scheduler.get_last_lr()[0],
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "val_accuracy": report["accuracy"],
            "val_balanced_accuracy": report["balanced_accuracy"],
            "val_ece": report["ece"],
            "epoch_seconds": round(train_seconds, 1),
        }
        history.append(entry)
        improved = best is None or entry["val_balanced_accuracy"] > best["val_balanced_accuracy"]
        if improved:
            best = dict(entry)
        print(f"epoch {epoch + 1}: loss {entry['train_loss']:.4f}, val acc {entry['val_accuracy']:.4f}, "
              f"val balanced acc {entry['val_balanced_accuracy']:.4f}, {train_seconds:.0f} s"
              + (" (best)" if improved else ""), flush=True)
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch + 1,
            "meta": meta.to_dict(),
            "history": history,
            "best": best,
            "config": config_record,
            "rng": _rng_state(),
        }
        save_checkpoint(payload, out / "last.pt")
        if improved:
            save_checkpoint(payload, out / "best.pt")
        _write_json(out / "history.json", history)

    return _finish(out, train_set, val_set, classes, mean, std, skipped, cfg)


#: The domain guard's threshold: this quantile of the validation images' scores
#: (so about 1 - GUARD_QUANTILE of images like the training set are flagged; MODEL_CARD.md
#: has the measurement behind the choice).
GUARD_QUANTILE = 0.975


def fit_domain_guard(model, train_set: ImageSet, val_set: ImageSet, mean, std, cfg: TrainConfig,
                     stages=DEFAULT_STAGES) -> tuple[dict, dict]:
    """(guard state for the checkpoint, guard record for the metadata):
    statistics from the training images, threshold from the validation images."""
    normalize = Normalize(mean, std, cfg.input_normalization)
    stats = fit_guard(stage_features(model, normalize, train_set.images, stages), train_set.labels,
                      len(train_set.classes), stages)
    guard = DomainGuard.from_statistics(stats)
    val_scores = stats.score(stage_features(model, normalize, val_set.images, stages))
    threshold = float(np.quantile(val_scores, GUARD_QUANTILE))
    record = {
        "method": "mahalanobis",
        "stages": list(stages),
        "threshold": round(threshold, 6),
        "quantile": GUARD_QUANTILE,
        "expected_fraction": round(1 - GUARD_QUANTILE, 4),
        "shift_fraction": DEFAULT_SHIFT_FRACTION,
        "fitted_on": {"train_images": len(train_set), "val_images": len(val_set),
                      "sources": [Path(d).name for d in (cfg.data, *[d for d, _ in cfg.extra_data])]},
    }
    return guard.state(), record


def _finish(out: Path, train_set: ImageSet, val_set: ImageSet, classes, mean, std, skipped,
            cfg: TrainConfig) -> dict[str, Any]:
    """Fits the temperature and the domain guard into ``best.pt``."""
    state = load_checkpoint(out / "best.pt")
    model = resnet18(num_classes=len(classes), norm=cfg.norm)
    model.load_state_dict(state["model"])
    model.eval()
    logits = net_logits(model, val_set.images, mean, std, cfg.device, input_normalization=cfg.input_normalization)
    temperature = fit_temperature(logits, val_set.labels)
    ece_before = expected_calibration_error(softmax(logits), val_set.labels)
    ece_after = expected_calibration_error(softmax(logits, temperature), val_set.labels)
    state["meta"]["temperature"] = temperature
    state["calibration"] = {"temperature": temperature, "val_ece_before": ece_before, "val_ece_after": ece_after}
    state["domain_guard"], state["meta"]["domain_guard"] = fit_domain_guard(model, train_set, val_set, mean, std, cfg)
    save_checkpoint(state, out / "best.pt")
    summary = {
        "best_epoch": state["best"],
        "epochs_run": len(json.loads((out / "history.json").read_text())),
        "classes": classes,
        "input_size": list(cfg.input_size),
        "mean": mean,
        "std": std,
        "temperature": temperature,
        "domain_guard": state["meta"]["domain_guard"],
        "val_ece_before": ece_before,
        "val_ece_after": ece_after,
        "skipped_images": [{"path": p, "reason": r} for p, r in skipped],
        "mean_epoch_seconds": float(np.mean([h["epoch_seconds"] for h in state["history"]] or [0.0])),
    }
    _write_json(out / "summary.json", summary)
    print(f"temperature {temperature:.3f}: val ECE {ece_before:.4f} -> {ece_after:.4f}; best model: {out / 'best.pt'}")
    return summary
