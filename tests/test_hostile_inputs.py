"""Hostile and careless inputs: a FIFO, a device, link loops, file
names that are not UTF-8 or carry escape sequences or spreadsheet formulas,
EPS/WEBP/JPEG 2000 under an image name, float and 32-bit TIFFs, poisoned model
metadata, manifests that climb out of the data root, links to the same file, a
reader that closes stdout early, huge images. Every file here is a real file
of that kind, made from the example cells."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, SAMPLE_DIR, SAMPLE_MANIFEST, sample_rows
from wbc_edge import Classifier
from wbc_edge.cli import main
from wbc_edge.decode import ImageReadError, decode_image
from wbc_edge.errors import MetadataError
from wbc_edge.metadata import ModelMetadata

EXAMPLES = REPO / "examples"
CELL = sorted(EXAMPLES.glob("*.jpg"))[0]


def cli(*args, timeout=240, cwd=REPO, shell=None):
    """wbc-edge in a new process (as a user runs it): (returncode, stdout, stderr) as bytes."""
    script = Path(sys.executable).parent / "wbc-edge"
    command = [str(script)] if script.is_file() else [
        sys.executable, "-c", "import sys; from wbc_edge.cli import main; sys.exit(main())"]
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": ""}
    if shell is not None:
        line = " ".join(f"'{c}'" for c in command) + " " + shell
        result = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=cwd, capture_output=True, timeout=timeout,
                                env=env)
    else:
        result = subprocess.run([*command, *map(os.fspath, args)], cwd=cwd, capture_output=True, timeout=timeout,
                                env=env)
    return result.returncode, result.stdout, result.stderr


def within(seconds, function, *args, **kwargs):
    """function(*args) in a daemon thread: its result, or a failure if it has not ended in time."""
    box = {}

    def target():
        try:
            box["value"] = function(*args, **kwargs)
        except BaseException as error:
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function.__name__} still running after {seconds} s (hung?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture(scope="module")
def classifier():
    with Classifier.load(batch_size=8) as c:
        yield c


@pytest.fixture(scope="module")
def cell_rgb():
    with Image.open(CELL) as image:
        return image.convert("RGB")


# --- 1, 16: FIFOs, devices, links that lead nowhere ---------------------------------------

def test_fifo_device_and_link_loops_are_reported_not_read(tmp_path, classifier):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(tmp_path / "loop.jpg")
    dangling = tmp_path / "dangling.jpg"
    dangling.symlink_to(tmp_path / "gone.jpg")
    cases = {fifo: "FIFO", Path("/dev/zero"): "character device", loop: "symbolic link loop",
             dangling: "broken symbolic link"}
    for path, reason in cases.items():
        with pytest.raises(ImageReadError, match=reason):
            within(10, decode_image, path)
    predictions = within(60, classifier.predict_batch, [fifo, CELL, Path("/dev/zero"), loop, dangling])
    assert [p.ok for p in predictions] == [False, True, False, False, False]
    assert "FIFO" in predictions[0].error and "empty" not in predictions[2].error
    assert "corrupt" not in predictions[3].error


def test_classify_with_a_fifo_in_the_folder_and_named_ends(tmp_path):
    folder = tmp_path / "cells"
    folder.mkdir()
    shutil.copy(CELL, folder / "a.jpg")
    os.mkfifo(folder / "x.jpg")
    os.mkfifo(tmp_path / "named.jpg")
    code, _out, err = cli("classify", folder, tmp_path / "named.jpg", "--out", tmp_path / "r.json", timeout=120)
    assert code == 0, err
    images = {Path(e["path"]).name: e for e in json.loads((tmp_path / "r.json").read_text())["images"]}
    assert set(images) == {"a.jpg", "x.jpg", "named.jpg"}
    assert images["a.jpg"]["error"] is None
    assert "FIFO" in images["x.jpg"]["error"] and "FIFO" in images["named.jpg"]["error"]


# --- 2, 15: names that are not UTF-8, escape sequences, formulas -------------------------

def test_non_utf8_escape_and_formula_names(tmp_path):
    folder = tmp_path / "cells"
    folder.mkdir()
    data = CELL.read_bytes()
    raw_names = [b"caf\xe9-\xff.jpg", b"\x1b[2J\x1b[31mred.jpg", b"=HYPERLINK(\"x\").jpg", b"+1.jpg",
                 b"@sum.jpg", b"plain.jpg"]
    for raw in raw_names:
        with open(os.path.join(os.fsencode(folder), raw), "wb") as f:
            f.write(data)
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    # relative names, as a user in that folder gets them: the formula characters come first
    code, out, err = cli("classify", ".", "--out", out_json, "--csv", out_csv, "--per-image", "all", cwd=folder)
    assert code == 0, err
    assert b"\x1b" not in out and b"\x1b" not in err  # nothing repaints the terminal
    out.decode("utf-8")  # valid UTF-8 on screen
    assert b"\\x1b[2J" in out and b"caf\\xe9-\\xff.jpg" in out
    report = json.loads(out_json.read_bytes().decode("utf-8"))  # strict UTF-8 JSON
    names = sorted(Path(e["path"]).name for e in report["images"])
    assert "caf\\xe9-\\xff.jpg" in names and len(names) == len(raw_names)
    assert all(e["error"] is None for e in report["images"])
    text = out_csv.read_bytes().decode("utf-8")  # written whole
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(raw_names)
    paths = sorted(r["path"] for r in rows)
    assert "'=HYPERLINK(\"x\").jpg" in paths and "'+1.jpg" in paths and "'@sum.jpg" in paths
    assert "plain.jpg" in paths
    for row in rows:  # no cell a spreadsheet would run
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r"))


def test_formula_cells_start_with_a_quote(tmp_path):
    from wbc_edge.prediction import Prediction
    from wbc_edge.report import write_csv

    predictions = [Prediction.failed("=cmd|' /C calc'!A0", "-oops"), Prediction.failed("@x", "\tx"),
                   Prediction.failed("ok.jpg", "fine")]
    rows = list(csv.reader(open(write_csv(predictions, ["a"], tmp_path / "p.csv"), newline="")))
    assert rows[1][0] == "'=cmd|' /C calc'!A0" and rows[1][5] == "'-oops"
    assert rows[2][0] == "'@x" and rows[2][5] == "'\tx"
    assert rows[3][0] == "ok.jpg"


# --- 4: formats the project does not support ----------------------------------------------

def test_eps_webp_and_jpeg2000_named_jpg_are_unsupported(tmp_path, cell_rgb, classifier):
    small = cell_rgb.resize((64, 64))
    made = {}
    for fmt, what in (("EPS", "EPS"), ("WEBP", "WEBP"), ("JPEG2000", "JPEG 2000")):
        path = tmp_path / f"{fmt.lower()}.jpg"
        small.save(path, format=fmt)
        made[path] = what
    with Image.open(next(iter(made))) as check:  # the EPS is a real one
        assert check.format == "EPS"
    for path, what in made.items():
        with pytest.raises(ImageReadError, match=f"{what}.*not a supported format"):
            decode_image(path)
    predictions = classifier.predict_batch(list(made))
    assert all(not p.ok and "not a supported format" in p.error for p in predictions)


# --- 5: float and 32-bit TIFFs --------------------------------------------------------------

def test_float_tiff_is_scaled_and_unscalable_tiffs_are_refused(tmp_path, cell_rgb, classifier):
    gray = np.asarray(cell_rgb.convert("L"))
    unit = tmp_path / "unit.tif"
    Image.fromarray(gray.astype(np.float32) / 255.0).save(unit)
    with Image.open(unit) as check:
        assert check.mode == "F"
    decoded = decode_image(unit)
    assert decoded.dtype == np.uint8 and np.abs(decoded.astype(int) - gray).max() <= 1
    assert decoded.std() > 10  # not an all-black image
    wide = tmp_path / "wide.tif"
    Image.fromarray(gray.astype(np.float32) * 4).save(wide)
    nan = tmp_path / "nan.tif"
    values = gray.astype(np.float32) / 255.0
    values[0, 0] = np.nan
    Image.fromarray(values).save(nan)
    int32 = tmp_path / "int32.tif"
    Image.fromarray(gray.astype(np.int32) * 65536).save(int32)
    with pytest.raises(ImageReadError, match=r"only values in \[0, 1\]"):
        decode_image(wide)
    with pytest.raises(ImageReadError, match="not finite"):
        decode_image(nan)
    with pytest.raises(ImageReadError, match="32-bit integer"):
        decode_image(int32)
    gray_png = tmp_path / "gray.png"
    Image.fromarray(gray).save(gray_png)
    got = classifier.predict_batch([unit, wide, int32, gray_png])
    assert got[0].ok and got[0].label == got[3].label
    assert abs(got[0].confidence - got[3].confidence) < 0.05
    assert not got[1].ok and not got[2].ok


# --- 3: huge images: reduced before they are kept; batch size capped ----------------------

def test_huge_images_are_reduced_when_the_target_is_small(tmp_path, cell_rgb):
    huge = tmp_path / "huge.png"
    cell_rgb.resize((4800, 4800)).save(huge, compress_level=1)
    full = decode_image(huge)
    assert full.shape == (4800, 4800, 3)
    reduced = decode_image(huge, reduce_to=(128, 128))
    assert reduced.shape == (1200, 1200, 3)  # factor 4: both sides still >= 8 x 128
    small = decode_image(CELL, reduce_to=(128, 128))  # ordinary cells are untouched (bit-exact)
    np.testing.assert_array_equal(small, decode_image(CELL))
    jpeg = tmp_path / "huge.jpg"
    cell_rgb.resize((4800, 4800)).save(jpeg, quality=90)
    assert decode_image(jpeg, reduce_to=(128, 128)).shape[0] in range(1024, 2401)


def test_batch_size_is_capped_with_a_message(capsys, tmp_path):
    code = main(["classify", str(EXAMPLES), "--batch-size", "100000", "--no-progress", "--out",
                 str(tmp_path / "r.json")])
    captured = capsys.readouterr()
    assert code == 0
    assert "--batch-size 100000 is more than 256: using 256" in captured.err
    assert json.loads((tmp_path / "r.json").read_text())["differential"]["total"] == 16


def test_the_python_api_caps_the_batch_size_too(classifier):
    paths = [str(p) for p in sorted(EXAMPLES.glob("*.jpg"))]
    with pytest.warns(UserWarning, match="batch_size 100000 is more than 256: using 256"):
        big = Classifier.load(batch_size=100000)
    with big:
        assert big.batch_size == 256
        with pytest.warns(UserWarning, match="batch_size 1000000 is more than 256"):
            streamed = list(big.predict_stream(paths, batch_size=1_000_000))
    assert [p.label for p in streamed] == [p.label for p in classifier.predict_batch(paths)]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
def test_two_dozen_huge_pngs_classify_within_4_gib_of_address_space(tmp_path, cell_rgb):
    """24 PNGs of 9459 x 9459 (under the bomb limit; 268 MB each when
    decoded, 6.4 GB together) classify with the address space capped at
    4 GiB: huge images are decoded one at a time and reduced before kept."""
    folder = tmp_path / "huge"
    folder.mkdir()
    cell_rgb.resize((9459, 9459)).save(folder / "h00.png", compress_level=1)
    for i in range(1, 24):
        shutil.copyfile(folder / "h00.png", folder / f"h{i:02d}.png")
    out = tmp_path / "r.json"

    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    done = subprocess.run([sys.executable, "-c", "import sys; from wbc_edge.cli import main; sys.exit(main())",
                           "classify", str(folder), "--out", str(out), "--no-progress"],
                          preexec_fn=limit, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["differential"]["total"] == 24 and report["differential"]["errors"] == 0


# --- 7: model metadata that would poison the run --------------------------------------------

GOOD = {"classes": ["a", "b"], "input_size": [64, 64], "mean": [0.5] * 3, "std": [0.25] * 3}


@pytest.mark.parametrize("change, message", [
    ({"temperature": 1e-310}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": "1.0"}, "temperature must be a number"),
    ({"input_size": [100000, 100000]}, "input_size"),
    ({"input_size": [64.5, 64]}, "whole numbers"),
    ({"input_size": "64x64"}, "input_size"),
    ({"classes": "ab"}, "classes"),
    ({"classes": ["a", 3]}, "classes"),
    ({"mean": [float("inf"), 0, 0]}, "mean/std"),
    ({"schema_version": "1"}, "schema_version"),
])
def test_metadata_is_validated(change, message):
    with pytest.raises(MetadataError, match=message):
        ModelMetadata.from_dict({**GOOD, **change})


def test_deeply_nested_metadata_file(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text(json.dumps(GOOD)[:-1] + ', "extra": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(MetadataError, match="nested"):
        ModelMetadata.load(deep)
    nested = tmp_path / "nested.json"
    value: object = 1
    for _ in range(40):
        value = {"x": value}
    nested.write_text(json.dumps({**GOOD, "extra": value}))
    with pytest.raises(MetadataError, match="nested more than 32"):
        ModelMetadata.load(nested)


def test_classify_with_poisoned_metadata_exits_2(capsys, tmp_path):
    from wbc_edge.models import variant_path

    shipped = variant_path("fp32")
    meta = json.loads(shipped.with_suffix(".json").read_text())
    for name, change, message in (("tiny", {"temperature": 1e-310}, "temperature"),
                                  ("wide", {"input_size": [100000, 100000]}, "input_size")):
        model = tmp_path / f"{name}.onnx"
        model.symlink_to(shipped)
        model.with_suffix(".json").write_text(json.dumps({**meta, **change}))
        code = main(["classify", str(CELL), "--model", str(model), "--backend", "onnxruntime", "--no-progress"])
        captured = capsys.readouterr()
        assert code == 2 and message in captured.err and "Traceback" not in captured.err


def test_reports_are_strict_json(tmp_path):
    from wbc_edge.report import write_json

    path = write_json({"confidence": float("nan"), "scores": [1.0, float("inf")], "n": np.float32(0.5)},
                      tmp_path / "r.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard {c}")) == {
        "confidence": None, "scores": [1.0, None], "n": 0.5}


# --- 8: manifests that climb out of the data root ------------------------------------------

def test_manifest_paths_outside_the_root_are_refused(capsys, tmp_path):
    from wbc_edge.datasets import DatasetError, read_manifest

    root = tmp_path / "data"
    shutil.copytree(SAMPLE_DIR, root)
    rows = sample_rows("test")[:4]
    outside = tmp_path / "secret.jpg"
    shutil.copy(CELL, outside)
    (root / "escape.jpg").symlink_to(outside)
    for bad in ("../secret.jpg", "/etc/passwd", str(outside), "escape.jpg", "neutrophil/../../secret.jpg"):
        manifest = tmp_path / "m.csv"
        with open(manifest, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "split"])
            writer.writerows([[r["path"], r["label"], "test"] for r in rows] + [[bad, rows[0]["label"], "test"]])
        with pytest.raises(DatasetError, match="outside the data folder"):
            read_manifest(manifest, root)
        code = main(["evaluate", str(root), "--manifest", str(manifest), "--split", "test", "--no-progress"])
        captured = capsys.readouterr()
        assert code == 2 and "outside the data folder" in captured.err and bad in captured.err
    assert len(read_manifest(SAMPLE_MANIFEST, SAMPLE_DIR)) == len(sample_rows())  # the real one still reads


# --- 9: links: every named path once, the same file counted once ---------------------------

def test_symlinks_and_hard_links_are_listed_and_counted_once(tmp_path):
    folder = tmp_path / "cells"
    folder.mkdir()
    shutil.copy(CELL, folder / "a.jpg")
    os.link(folder / "a.jpg", folder / "b_hard.jpg")
    (folder / "c_link.jpg").symlink_to(folder / "a.jpg")
    other = sorted(EXAMPLES.glob("*.jpg"))[1]
    shutil.copy(other, folder / "d.jpg")
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    code, _out, err = cli("classify", folder, folder / "a.jpg", folder / "c_link.jpg", "--out", out_json, "--csv", out_csv)
    assert code == 0, err
    report = json.loads(out_json.read_text())
    names = [Path(e["path"]).name for e in report["images"]]
    assert names == ["a.jpg", "b_hard.jpg", "c_link.jpg", "d.jpg"]  # every path once
    same = {Path(e["path"]).name: e["same_file_as"] and Path(e["same_file_as"]).name for e in report["images"]}
    assert same == {"a.jpg": None, "b_hard.jpg": "a.jpg", "c_link.jpg": "a.jpg", "d.jpg": None}
    d = report["differential"]
    assert d["total"] == 2 and d["same_file"] == 2 and d["inputs"] == 4  # the cell counted once
    entries = {Path(e["path"]).name: e for e in report["images"]}
    assert entries["b_hard.jpg"]["label"] == entries["a.jpg"]["label"]
    assert b"same file as another input" in err and b"named more than once" in err
    rows = list(csv.DictReader(open(out_csv)))
    assert [Path(r["same_file_as"]).name if r["same_file_as"] else None for r in rows] == [
        None, "a.jpg", "a.jpg", None]


# --- 13: a reader that stops early ----------------------------------------------------------

def test_closed_stdout_keeps_the_report(tmp_path):
    out_json = tmp_path / "r.json"
    code, out, err = cli(shell=f"classify examples/ --out '{out_json}' --per-image all | head -1")
    assert out.count(b"\n") == 1
    assert code == 0, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err
    assert json.loads(out_json.read_text())["differential"]["total"] == 16


# --- 17: what a newcomer trips on -----------------------------------------------------------

def test_misspelled_input_folder_exits_2(capsys, tmp_path):
    code = main(["classify", str(tmp_path / "cels"), str(CELL), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and "no such file or folder" in captured.err and "cels" in captured.err


def test_evaluate_checks_plots_and_data_first(capsys, tmp_path, monkeypatch):
    code = main(["evaluate", str(tmp_path / "nope"), "--no-progress"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code = main(["evaluate", str(SAMPLE_DIR), "--manifest", str(SAMPLE_MANIFEST), "--out", str(SAMPLE_MANIFEST)])
    assert code == 2 and "is an input" in capsys.readouterr().err
    import importlib

    real = importlib.import_module

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_matplotlib)
    code = main(["evaluate", str(SAMPLE_DIR), "--manifest", str(SAMPLE_MANIFEST), "--plots", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and "wbc-edge[plots]" in err
    assert not (tmp_path / "p").exists()


def test_every_command_help_has_examples_and_defaults():
    from wbc_edge.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in ("classify", "info", "evaluate", "train", "export", "calibrate", "compare", "build-engine"):
        text = sub.choices[name].format_help()
        assert "examples:" in text and f"wbc-edge {name}" in text.split("examples:", 1)[1], name
        for action in sub.choices[name]._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help text"


# --- 10: a slow source is not kept waiting for a full batch ---------------------------------

def test_slow_source_gets_answers_before_a_full_batch(classifier):
    import time

    cells = sorted(EXAMPLES.glob("*.jpg"))[:6]
    arrived = {}

    def camera():
        for path in cells:
            time.sleep(0.4)  # one cell every 0.4 s: a full batch of 64 would take 26 s
            arrived[os.fspath(path)] = time.monotonic()
            yield path

    answered = {}
    for prediction in classifier.predict_stream(camera(), batch_size=64, max_wait=0.2):
        answered[prediction.path] = time.monotonic()
    assert list(answered) == [os.fspath(p) for p in cells]
    assert max(answered[k] - arrived[k] for k in answered) < 2.0  # each within ~max_wait + inference
    expected = classifier.predict_batch(cells)
    got = list(classifier.predict_stream(iter(cells), batch_size=4, max_wait=None))
    assert [(p.label, p.confidence) for p in got] == [(p.label, p.confidence) for p in expected]

    def broken():
        yield cells[0]
        raise OSError("camera unplugged")

    with pytest.raises(OSError, match="camera unplugged"):
        list(classifier.predict_stream(broken(), batch_size=8, max_wait=0.05))
    with pytest.raises(Exception, match="max_wait"):
        classifier.predict_stream(cells, max_wait=-1)


# --- 16: messages that do not mislead --------------------------------------------------------

class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_refusal_does_not_repeat_the_unsafe_advice(tmp_path):
    torch = pytest.importorskip("torch")
    from wbc_edge.training.checkpoint import CheckpointError, load_checkpoint

    bad = tmp_path / "bad.pt"
    torch.save({"model": {}, "payload": _Payload()}, bad)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(bad)
    message = str(caught.value)
    assert "refused to load" in message and "system" in message  # names what it refused
    assert "can still be loaded" not in message and "two options" not in message.lower()
    assert "Do not load it with weights_only=False" in message


def test_bomb_message_names_an_option_the_cli_has(capsys, tmp_path):
    from tests.test_inputs import png_header_only

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(12000, 12000))  # over our limit, under Pillow's own hard one
    code = main(["classify", str(bomb), "--no-progress", "--out", str(tmp_path / "r.json")])
    capsys.readouterr()
    error = json.loads((tmp_path / "r.json").read_text())["images"][0]["error"]
    assert code == 0 and "decompression bomb" in error and "--max-pixels" in error
    code = main(["classify", str(bomb), "--no-progress", "--max-pixels", str(12000 * 12000),
                 "--out", str(tmp_path / "r.json")])
    capsys.readouterr()
    error = json.loads((tmp_path / "r.json").read_text())["images"][0]["error"]
    assert "decompression bomb" not in error  # the limit was raised: decoding was attempted


def test_decoded_images_are_released_once_resized(classifier):
    from wbc_edge.backends.base import split_outputs

    cells = sorted(EXAMPLES.glob("*.jpg"))[:3]
    chunk = classifier._read([*cells, Path("/nonexistent.jpg")])
    assert chunk.batch is not None and len(chunk.batch) == 3
    assert not any(isinstance(image, np.ndarray) for image in chunk.images)  # only the resized batch is held
    assert [image is not None for image in chunk.images] == [True, True, True, False]
    got = classifier._predictions(chunk, split_outputs(classifier.metadata, classifier.runner.infer(chunk.batch)))
    assert [p.ok for p in got] == [True, True, True, False]
    assert [p.label for p in got[:3]] == [p.label for p in classifier.predict_batch(cells)]
