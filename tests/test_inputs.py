"""Inputs that must not hurt: broken files are reported with a clear reason,
odd but valid images are classified, and the rest of the batch goes on.

Every file here is made from a real cell image of the shipped sample."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SAMPLE_DIR, sample_rows
from wbc_edge import Classifier


@pytest.fixture(scope="module")
def classifier():
    with Classifier.load(batch_size=8) as c:
        yield c


@pytest.fixture(scope="module")
def cell_path():
    return SAMPLE_DIR / sample_rows("test")[0]["path"]


@pytest.fixture(scope="module")
def cell(cell_path):
    with Image.open(cell_path) as image:
        return image.convert("RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, and one tiny IDAT:
    what a decompression bomb looks like before its pixels are decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory, cell_path):
    """name -> (path, expected reason fragment)"""
    folder = tmp_path_factory.mktemp("broken")
    data = cell_path.read_bytes()
    files = {
        "truncated.jpg": (data[: len(data) // 2], "truncated"),
        "empty.jpg": (b"", "empty file"),
        "text.png": (b"this is a lab note, not a picture\n" * 20, "not a recognized image format"),
        "random.jpg": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                       "not a recognized image format"),
        "bomb.png": (png_header_only(60000, 60000), "decompression bomb"),
        "header_only.jpg": (data[:200], "truncated"),
    }
    out = {}
    for name, (content, reason) in files.items():
        path = folder / name
        path.write_bytes(content)
        out[name] = (path, reason)
    return out


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory, cell):
    """Valid images in every form a lab may produce: name -> path."""
    folder = tmp_path_factory.mktemp("odd")
    gray = cell.convert("L")
    forms = {
        "gray.png": gray,
        "rgba.png": cell.convert("RGBA"),
        "palette.png": cell.convert("P"),
        "cmyk.jpg": cell.convert("CMYK"),
        "gray16.png": Image.fromarray(np.asarray(gray).astype(np.uint16) * 257),
        "one_pixel.png": cell.resize((1, 1)),
        "cell.bmp": cell,
        "cell.tif": cell,
        "bilevel.png": cell.convert("1"),
    }
    paths = {}
    for name, image in forms.items():
        image.save(folder / name)
        paths[name] = folder / name
    assert Image.open(paths["gray16.png"]).mode == "I;16"
    return paths


def test_broken_files_are_reported_with_the_reason(classifier, broken_files, cell_path):
    names = list(broken_files)
    inputs = [cell_path] + [broken_files[n][0] for n in names] + [cell_path]
    got = classifier.predict_batch(inputs)
    assert len(got) == len(inputs)
    assert got[0].ok and got[-1].ok and got[0].probabilities == got[-1].probabilities
    for name, p in zip(names, got[1:-1]):
        path, reason = broken_files[name]
        assert p.path == str(path)
        assert p.error is not None and reason in p.error, (name, p.error)
        assert p.label is None and p.confidence is None and p.probabilities is None and not p.review


def test_bomb_is_refused_before_decoding(classifier, broken_files):
    p = classifier.predict(broken_files["bomb.png"][0].read_bytes())
    assert "60000x60000" in p.error or "decompression bomb" in p.error


def test_odd_valid_images_are_classified(classifier, odd_images, cell):
    got = dict(zip(odd_images, classifier.predict_batch(list(odd_images.values()))))
    for name, p in got.items():
        assert p.ok, (name, p.error)
        assert p.label in classifier.classes and abs(sum(p.probabilities.values()) - 1) < 1e-9
    gray = np.asarray(cell.convert("L"))
    # each form means the image it was made from
    as_array = classifier.predict_batch([gray, np.asarray(cell.convert("RGBA")), np.asarray(cell.convert("P").convert("RGB")),
                                         np.asarray(cell)])
    assert got["gray.png"].probabilities == as_array[0].probabilities
    assert got["gray16.png"].probabilities == as_array[0].probabilities  # 16 -> 8 bits loses nothing here
    assert got["rgba.png"].probabilities == as_array[1].probabilities == as_array[3].probabilities  # alpha dropped
    assert got["palette.png"].probabilities == as_array[2].probabilities
    assert got["cell.bmp"].probabilities == got["cell.tif"].probabilities == as_array[3].probabilities


def test_arrays_of_the_wrong_kind_fail_alone(classifier, cell):
    rgb = np.asarray(cell)
    inputs = [rgb, rgb.astype(np.float32), rgb[:, :, :2], rgb[:0], None, 42, rgb[..., 0:1], rgb]
    got = classifier.predict_batch(inputs)
    assert got[0].ok and got[-1].ok and got[6].ok
    assert "uint8" in got[1].error
    assert "(h, w, 1|3|4)" in got[2].error
    assert "no pixels" in got[3].error
    assert "None" in got[4].error
    assert "cannot classify an object of type int" in got[5].error


def test_bytes_file_objects_and_pil_images_that_are_broken(classifier, broken_files, cell_path):
    import io

    truncated = broken_files["truncated.jpg"][0].read_bytes()
    lazy = Image.open(io.BytesIO(truncated))  # opens (header is fine), fails when its pixels are read
    got = classifier.predict_batch([b"", truncated, io.BytesIO(b"junk"), lazy, cell_path])
    assert got[0].error == "empty input"
    assert "truncated" in got[1].error
    assert got[2].error == "not a recognized image format"
    assert "truncated" in got[3].error
    assert got[4].ok


def test_missing_paths_and_directories(classifier, tmp_path, cell_path):
    (tmp_path / "folder.jpg").mkdir()
    got = classifier.predict_batch([tmp_path / "nope.jpg", tmp_path / "folder.jpg", tmp_path, cell_path])
    assert got[0].error == "file not found"
    assert "directory" in got[1].error and "directory" in got[2].error
    assert got[3].ok


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="runs as root here, and root reads files whatever their permissions")
def test_unreadable_file(classifier, tmp_path, cell_path):
    path = tmp_path / "locked.jpg"
    path.write_bytes(cell_path.read_bytes())
    path.chmod(0)
    try:
        got = classifier.predict_batch([path, cell_path])
    finally:
        path.chmod(0o644)
    assert got[0].error == "permission denied" and got[1].ok


def test_stream_survives_the_same_inputs(classifier, broken_files, odd_images, cell_path):
    inputs = [p for p, _ in broken_files.values()] + list(odd_images.values()) + [cell_path]
    streamed = list(classifier.predict_stream(iter(inputs)))
    assert [p.to_dict() for p in streamed] == [p.to_dict() for p in classifier.predict_batch(inputs)]
    assert sum(p.ok for p in streamed) == len(odd_images) + 1
