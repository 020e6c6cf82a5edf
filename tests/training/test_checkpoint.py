"""Checkpoints: torchvision-format state_dicts load unchanged; malicious or
broken files are refused without running anything."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is needed (pip install 'wbc-edge[torch]')")

from wbc_edge.training.checkpoint import (  # noqa: E402
    CheckpointError,
    extract_state_dict,
    load_checkpoint,
    load_model,
    load_resnet18,
    save_checkpoint,
)
from wbc_edge.training.resnet import resnet18  # noqa: E402


def torchvision_resnet18_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of torchvision.models.resnet18, written out
    from torchvision's definition (torchvision cannot be imported here)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        shapes.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                       f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for layer, planes in enumerate([64, 128, 256, 512], start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            cin = inplanes if block == 0 else planes
            shapes[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            if block == 0 and layer > 1:
                shapes[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes)
        inplanes = planes
    shapes["fc.weight"] = (num_classes, 512)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def random_state(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: (torch.randint(0, 100, shape, generator=gen) if name.endswith("num_batches_tracked")
                   else torch.randn(shape, generator=gen)) for name, shape in shapes.items()}


def test_our_resnet18_has_torchvision_names_and_shapes():
    ours = {k: tuple(v.shape) for k, v in resnet18(num_classes=1000).state_dict().items()}
    assert ours == torchvision_resnet18_shapes(1000)


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model_state_dict_dataparallel"])
@pytest.mark.parametrize("num_classes", [1000, 8, 4])
def test_torchvision_state_dicts_load_unchanged(tmp_path, wrap, num_classes):
    state = random_state(torchvision_resnet18_shapes(num_classes))
    if wrap == "bare":
        payload = state
    elif wrap == "state_dict":
        payload = {"state_dict": state, "epoch": 90}
    else:
        payload = {"model_state_dict": {f"module.{k}": v for k, v in state.items()}, "optimizer": {}}
    path = tmp_path / "ckpt.pth"
    torch.save(payload, path)
    model = load_resnet18(extract_state_dict(load_checkpoint(path)))
    assert model.fc.out_features == num_classes
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_wrong_architecture_is_refused(tmp_path):
    state = random_state(torchvision_resnet18_shapes(8))
    del state["layer4.1.conv2.weight"]
    with pytest.raises(CheckpointError, match="do not fit ResNet-18"):
        load_resnet18(state)
    with pytest.raises(CheckpointError, match="no 'fc.weight'"):
        load_resnet18({"conv1.weight": torch.zeros(64, 3, 7, 7)})


class Exploit:
    """Unpickling this would run a shell command (here: create a file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 512)}, "payload": Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_foreign_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(random_state(torchvision_resnet18_shapes(8)), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_bare_state_dict_lacks_metadata(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(random_state(torchvision_resnet18_shapes(8)), path)
    with pytest.raises(CheckpointError, match="no 'meta' record"):
        load_model(path)


def test_save_is_atomic_and_round_trips(tmp_path):
    state = random_state(torchvision_resnet18_shapes(3))
    meta = {"classes": ["a", "b", "c"], "input_size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3}
    path = save_checkpoint({"model": state, "meta": meta}, tmp_path / "sub" / "model.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temporary file left
    model, metadata = load_model(path)
    assert metadata.classes == ["a", "b", "c"] and metadata.input_size == (32, 32)
    assert not model.training
