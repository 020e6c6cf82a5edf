"""Outputs: one atomic writer for every file
wbc-edge writes, which never writes through a link, never replaces what is not
a regular file, never leaves half a file; and output paths checked before any
work. Every case uses a real link, FIFO, device, folder or input file."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from tests.conftest import REPO
from wbc_edge.atomic import OutputPathError, check_output, check_outputs, write_atomic
from wbc_edge.cli import main
from wbc_edge.metadata import ModelMetadata

EXAMPLES = REPO / "examples"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_writes_atomically_and_keeps_permissions(tmp_path):
    target = tmp_path / "report.json"
    assert write_atomic(target, "first\n") == target
    assert target.read_text() == "first\n"
    target.chmod(0o640)
    write_atomic(target, b"second\n")
    assert target.read_bytes() == b"second\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    write_atomic(target, writer=lambda f: f.write(b"third"))
    assert target.read_bytes() == b"third"
    assert leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous model")

    def fails(f):
        f.write(b"half a mod")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_atomic(target, writer=fails)
    assert target.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_refuses_a_symlink_target_and_leaves_what_it_points_to(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "report.json"
    link.symlink_to(victim)
    with pytest.raises(OutputPathError, match="symbolic link"):
        write_atomic(link, "{}")
    assert victim.read_text() == "precious" and link.is_symlink()
    # a link to a device (what replaced /dev/stdout when run as root)
    dev_link = tmp_path / "out.json"
    dev_link.symlink_to("/dev/null")
    with pytest.raises(OutputPathError, match="symbolic link"):
        write_atomic(dev_link, "{}")
    assert Path("/dev/null").is_char_device()
    # asked to follow: the link's target is replaced, the link stays
    write_atomic(link, "new", follow_symlinks=True)
    assert victim.read_text() == "new" and link.is_symlink()


def test_a_planted_tmp_link_redirects_nothing(tmp_path):
    """The old writers wrote '<out>.tmp' then renamed: a link planted there sent the bytes into its target."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("report.json", "model.json"):
        (tmp_path / f"{name}.tmp").symlink_to(victim)
    from wbc_edge.report import write_json

    write_json({"images": []}, tmp_path / "report.json")
    ModelMetadata(classes=["a", "b"], input_size=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3).save(tmp_path / "model.json")
    assert victim.read_text() == "precious"
    assert json.loads((tmp_path / "report.json").read_text()) == {"images": []}
    assert ModelMetadata.load(tmp_path / "model.json").classes == ["a", "b"]


def test_refuses_fifos_devices_folders_and_empty_names(tmp_path):
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    with pytest.raises(OutputPathError, match="FIFO"):
        write_atomic(fifo, "{}")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(OutputPathError, match="character device"):
        check_output("/dev/full", "--out")
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output(tmp_path, "--out")
    with pytest.raises(OutputPathError, match="names a folder"):
        check_output(f"{tmp_path}/new/", "--out")
    with pytest.raises(OutputPathError, match="empty"):
        check_output("", "--out")
    with pytest.raises(OutputPathError, match="does not exist"):
        check_output(tmp_path / "no" / "such" / "r.json", "--out")
    assert check_output(tmp_path / "no" / "such" / "r.json", "--out", make_parents=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes whatever the permissions")
def test_refuses_unwritable_places(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="permission denied"):
            check_output(locked / "r.json", "--out")
    finally:
        locked.chmod(0o700)


def test_outputs_that_are_each_other_or_an_input(tmp_path):
    image = tmp_path / "cell.jpg"
    shutil.copy(next(EXAMPLES.glob("*.jpg")), image)
    hard = tmp_path / "hard.json"
    os.link(image, hard)
    with pytest.raises(OutputPathError, match="same file"):
        check_outputs({"--out": tmp_path / "r.out", "--csv": tmp_path / "." / "r.out"})
    with pytest.raises(OutputPathError, match="is an input"):
        check_outputs({"--out": image}, [image])
    with pytest.raises(OutputPathError, match="is an input"):
        check_outputs({"--out": hard}, [image])  # a hard link to an input is that input
    assert check_outputs({"--out": tmp_path / "r.json", "--csv": None}, [image]) == {"--out": tmp_path / "r.json"}


def classify(capsys, *args):
    code = main(["classify", *map(str, args), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_classify_checks_every_output_before_any_work(capsys, tmp_path):
    image = tmp_path / "cell.jpg"
    shutil.copy(next(EXAMPLES.glob("*.jpg")), image)
    original = image.read_bytes()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "link.json"
    link.symlink_to(victim)
    cases = [
        (["--out", image], "is an input"),
        (["--csv", image], "is an input"),
        (["--out", tmp_path / "r.x", "--csv", tmp_path / "r.x"], "same file"),
        (["--out", tmp_path], "is a folder"),
        (["--out", ""], "empty"),
        (["--csv", ""], "empty"),
        (["--out", link], "symbolic link"),
        (["--out", "/dev/full"], "character device"),
        (["--out", tmp_path / "missing" / "r.json"], "does not exist"),
    ]
    for options, message in cases:
        code, out, err = classify(capsys, image, *options)
        assert code == 2, (options, out, err)
        assert message in err, (options, err)
        assert "classified" not in out  # refused before the model ran
    assert image.read_bytes() == original and victim.read_text() == "precious"
    assert leftovers(tmp_path) == []


def test_checkpoints_and_models_use_the_same_writer(tmp_path):
    torch = pytest.importorskip("torch")
    from wbc_edge.training.checkpoint import load_checkpoint, save_checkpoint

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "last.pt").symlink_to(victim)
    with pytest.raises(OutputPathError, match="symbolic link"):
        save_checkpoint({"w": torch.zeros(2)}, tmp_path / "last.pt")
    (tmp_path / "best.pt.tmp").symlink_to(victim)  # the old temporary name
    save_checkpoint({"w": torch.ones(2)}, tmp_path / "runs" / "best.pt")
    save_checkpoint({"w": torch.ones(3)}, tmp_path / "best.pt")
    assert victim.read_text() == "precious"
    assert load_checkpoint(tmp_path / "best.pt")["w"].tolist() == [1.0, 1.0, 1.0]
    assert load_checkpoint(tmp_path / "runs" / "best.pt")["w"].tolist() == [1.0, 1.0]


def test_one_rename_site_in_the_package():
    """Every output goes through wbc_edge/atomic.py: no other module renames files into place or
    writes a predictable temporary name."""
    sites, tmp_names = [], []
    for folder in ("wbc_edge",):
        for source in (REPO / folder).rglob("*.py"):
            text = source.read_text()
            for match in re.finditer(r"os\.(replace|rename)\(|\.rename\(", text):
                sites.append(f"{source.relative_to(REPO)}:{text[:match.start()].count(chr(10)) + 1}")
            if re.search(r"""["']\.tmp["']""", text) and source.name != "atomic.py":
                tmp_names.append(str(source.relative_to(REPO)))
    assert len(sites) <= 2 and all(s.startswith("wbc_edge/atomic.py:") for s in sites), sites
    assert tmp_names == []


def test_the_writer_gets_a_file_named_by_its_path(tmp_path):
    """Writers that look at the file's name (onnx.save does) get the temporary path beside the target."""
    names = []
    write_atomic(tmp_path / "m.onnx", writer=lambda f: (names.append(f.name), f.write(b"x")))
    assert isinstance(names[0], str) and Path(names[0]).parent == tmp_path and names[0].endswith(".tmp")
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    write_atomic(tmp_path / "m.onnx", writer=lambda f: onnx.save(model, f))
    assert onnx.load(str(tmp_path / "m.onnx")).graph.node[0].op_type == "Identity"
