"""Training on real cell images: a short run, checkpoints, resuming, and
unreadable images skipped and listed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is needed (pip install 'wbc-edge[train]')")

from wbc_edge.training import train as train_module  # noqa: E402
from wbc_edge.training.augment import AugmentConfig, augment  # noqa: E402
from wbc_edge.training.checkpoint import load_checkpoint, load_model  # noqa: E402
from wbc_edge.training.train import TrainConfig, train  # noqa: E402


def config(sample_dir, sample_manifest, out, **overrides) -> TrainConfig:
    options = dict(data=str(sample_dir), manifest=str(sample_manifest), out=str(out), epochs=2, batch_size=16,
                   input_size=(32, 32), progress=False, seed=3)
    options.update(overrides)
    return TrainConfig(**options)


def test_two_epochs_write_checkpoints_history_and_temperature(sample_dir, sample_manifest, tmp_path):
    summary = train(config(sample_dir, sample_manifest, tmp_path))
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt", "best.pt", "history.json", "summary.json"}
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    last = load_checkpoint(tmp_path / "last.pt")
    assert {"model", "optimizer", "scheduler", "epoch", "meta", "rng", "history", "config"} <= set(last)
    assert last["epoch"] == 2
    _model, meta = load_model(tmp_path / "best.pt")
    assert meta.classes == sorted(meta.classes) and len(meta.classes) == 8
    assert meta.input_size == (32, 32)
    assert meta.temperature == summary["temperature"] > 0
    assert len(meta.mean) == 3 and all(0 < s < 1 for s in meta.std)
    # only train and val rows were read: the sample's 128 test images never were
    assert history[-1]["val_accuracy"] >= 0.0 and summary["skipped_images"] == []


def test_resume_continues_exactly(sample_dir, sample_manifest, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train(config(sample_dir, sample_manifest, straight))

    # Interrupt a second run right after its first epoch's checkpoint is written.
    interrupted = tmp_path / "interrupted"
    real_write = train_module._write_json

    def crash_once(path, data):
        monkeypatch.setattr(train_module, "_write_json", real_write)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(train_module, "_write_json", crash_once)
    with pytest.raises(KeyboardInterrupt):
        train(config(sample_dir, sample_manifest, interrupted))
    assert load_checkpoint(interrupted / "last.pt")["epoch"] == 1

    train(config(sample_dir, sample_manifest, interrupted, resume=True))
    a = load_checkpoint(straight / "last.pt")
    b = load_checkpoint(interrupted / "last.pt")
    assert b["epoch"] == 2
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_unreadable_images_are_skipped_and_listed(sample_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data, ignore=shutil.ignore_patterns("manifest.csv", "*.md"))
    broken = data / "monocyte" / "broken.jpg"
    broken.write_bytes(next((data / "monocyte").glob("*.jpg")).read_bytes()[:300])
    (data / "lymphocyte" / "notes.txt").write_text("not an image, not listed")
    summary = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, batch_size=16,
                                input_size=(32, 32), progress=False))
    assert [s["path"] for s in summary["skipped_images"]] == [str(broken)]
    assert "truncated" in summary["skipped_images"][0]["reason"]


def test_augmentation_is_seeded_and_keeps_range(cell_images):
    from wbc_edge import preprocess_batch

    batch = torch.from_numpy(preprocess_batch(cell_images[:8], (48, 48)))
    a = augment(batch, AugmentConfig(), torch.Generator().manual_seed(5))
    b = augment(batch, AugmentConfig(), torch.Generator().manual_seed(5))
    c = augment(batch, AugmentConfig(), torch.Generator().manual_seed(6))
    assert a.shape == (8, 3, 48, 48) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    # without augmentation it is the plain [0, 1] scaling of the preprocessed batch
    plain = augment(batch, AugmentConfig(dihedral=False, max_rotation_deg=0, min_scale=1, max_scale=1, max_shift=0,
                                         brightness=0, contrast=0, saturation=0, hue=0, stain=0, hed=0, gamma=0,
                                         grayscale=0, blur=0, noise=0, jpeg=0),
                    torch.Generator())
    expected = batch.permute(0, 3, 1, 2).float() / 255
    np.testing.assert_allclose(plain.numpy(), expected.numpy(), atol=1e-6)


def test_hed_jitter_of_zero_is_the_identity_and_moves_stain_otherwise(cell_images):
    from wbc_edge import preprocess_batch
    from wbc_edge.training.augment import hed_jitter

    x = torch.from_numpy(preprocess_batch(cell_images[:4], (32, 32))).permute(0, 3, 1, 2).float() / 255
    x = x.clamp(min=1 / 255)  # optical density is defined from 1/255 up
    same = hed_jitter(x, 0.0, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(same.numpy(), x.numpy(), atol=1e-5)
    moved = hed_jitter(x, 0.2, torch.Generator().manual_seed(0))
    assert float((moved - x).abs().mean()) > 0.01


def test_black_corners_appear_only_when_asked(cell_images):
    from wbc_edge import preprocess_batch

    batch = torch.from_numpy(preprocess_batch(cell_images[:8], (48, 48)))
    base = dict(dihedral=False, max_rotation_deg=45, min_scale=1, max_scale=1, max_shift=0, brightness=0,
                contrast=0, saturation=0, hue=0, stain=0, hed=0, gamma=0, grayscale=0, blur=0, noise=0, jpeg=0)
    black = augment(batch, AugmentConfig(**base, black_corners=1.0), torch.Generator().manual_seed(1))
    reflected = augment(batch, AugmentConfig(**base, black_corners=0.0), torch.Generator().manual_seed(1))
    corner = (slice(None), slice(None), slice(0, 3), slice(0, 3))
    assert float(black[corner].sum(dim=(1, 2, 3)).min()) < 0.5  # some image starts with a black corner
    assert float(reflected[corner].mean()) > 0.2  # real cell images have bright backgrounds


def test_groupnorm_checkpoints_load_back(tmp_path):
    from wbc_edge.training.checkpoint import load_resnet18
    from wbc_edge.training.resnet import resnet18

    net = resnet18(num_classes=3, norm="group")
    assert "bn1.running_mean" not in net.state_dict() and "bn1.weight" in net.state_dict()
    loaded = load_resnet18(net.state_dict())
    assert isinstance(loaded.bn1, torch.nn.GroupNorm)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), net.eval()(x))
    with pytest.raises(ValueError, match="norm must be one of"):
        resnet18(norm="layer")


def test_group_split_keeps_groups_together_and_is_stable(tmp_path):
    from wbc_edge.datasets import group_split, read_manifest

    manifest = tmp_path / "manifest.csv"
    rows = ["path,label,group"] + [f"{c}/{g}_{i}.jpg,{c},{c}-{g}" for c in ("a", "b") for g in range(40) for i in range(3)]
    manifest.write_text("\n".join(rows) + "\n")
    samples = read_manifest(manifest)
    by_group = {}
    for s in samples:
        by_group.setdefault(s.path.name.split("_")[0] + s.label, set()).add(s.split)
    assert all(len(splits) == 1 for splits in by_group.values())
    shares = {k: sum(s.split == k for s in samples) / len(samples) for k in ("train", "val", "test")}
    assert 0.5 < shares["train"] < 0.9 and shares["val"] > 0.03 and shares["test"] > 0.03
    assert group_split("basophil-000") == group_split("basophil-000") and group_split(None) is None


def test_per_image_normalization_removes_a_stain_cast(cell_images):
    from wbc_edge import preprocess_batch
    from wbc_edge.training.deployable import Normalize

    batch = torch.from_numpy(preprocess_batch(cell_images[:4], (32, 32)))
    cast = (batch.float() * torch.tensor([0.8, 0.9, 1.0])).round().to(torch.uint8)  # a bluer, darker lab
    norm = Normalize([0.5] * 3, [0.25] * 3, "per_image")
    diff_per_image = (norm(batch) - norm(cast)).abs().mean()
    dataset = Normalize([0.5] * 3, [0.25] * 3, "dataset")
    diff_dataset = (dataset(batch) - dataset(cast)).abs().mean()
    assert float(diff_per_image) < 0.1 * float(diff_dataset)
