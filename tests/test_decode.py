"""Decoding every image form a lab may produce, and every broken input, from
real cell images (re-encoded or damaged here)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wbc_edge import preprocess_batch
from wbc_edge.decode import ImageReadError, decode_image, decode_images


@pytest.fixture(scope="module")
def cell(sample_paths) -> tuple[Path, np.ndarray]:
    path = sample_paths[0]
    with Image.open(path) as image:
        return path, np.asarray(image.convert("RGB"))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but carries almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_jpeg_file_decodes_like_pillow(cell):
    path, rgb = cell
    np.testing.assert_array_equal(decode_image(path), rgb)
    np.testing.assert_array_equal(decode_image(str(path)), rgb)
    np.testing.assert_array_equal(decode_image(path.read_bytes()), rgb)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(decode_image(f), rgb)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_formats_round_trip(cell, fmt):
    _, rgb = cell
    np.testing.assert_array_equal(decode_image(encode(Image.fromarray(rgb), fmt)), rgb)


def test_gray_rgba_palette_cmyk(cell):
    _, rgb = cell
    image = Image.fromarray(rgb)
    gray = decode_image(encode(image.convert("L"), "PNG"))
    assert gray.shape == rgb.shape[:2]
    rgba = decode_image(encode(image.convert("RGBA"), "PNG"))
    assert rgba.shape == (*rgb.shape[:2], 4)
    np.testing.assert_array_equal(rgba[..., :3], rgb)
    palette = decode_image(encode(image.convert("P"), "PNG"))
    np.testing.assert_array_equal(palette, np.asarray(image.convert("P").convert("RGB")))
    cmyk = decode_image(encode(image.convert("CMYK"), "TIFF"))
    np.testing.assert_array_equal(cmyk, np.asarray(image.convert("CMYK").convert("RGB")))
    la = decode_image(encode(image.convert("LA"), "PNG"))
    np.testing.assert_array_equal(la, gray)
    # every form preprocesses to an RGB batch
    assert preprocess_batch([gray, rgba, palette, cmyk, la], (64, 64)).shape == (5, 64, 64, 3)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_scaled_to_eight(cell, fmt):
    _, rgb = cell
    gray8 = np.asarray(Image.fromarray(rgb).convert("L"))
    gray16 = gray8.astype(np.uint16) * 257  # exact 8 -> 16 bit expansion
    decoded = decode_image(encode(Image.fromarray(gray16), fmt))
    np.testing.assert_array_equal(decoded, gray8)


def test_one_pixel_image():
    decoded = decode_image(encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"))
    assert decoded.shape == (1, 1, 3)
    assert (preprocess_batch([decoded], (128, 128)) == (10, 20, 30)).all()


# --- inputs that must not hurt ------------------------------------------------------------

def test_truncated_jpeg(cell, tmp_path):
    path, _ = cell
    data = path.read_bytes()
    broken = tmp_path / "truncated.jpg"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"truncated\.jpg: corrupt or truncated image"):
        decode_image(broken)


def test_truncated_png(cell):
    data = encode(Image.fromarray(cell[1]), "PNG")
    with pytest.raises(ImageReadError, match="corrupt or truncated"):
        decode_image(data[:200])


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png: empty file"):
        decode_image(empty)
    with pytest.raises(ImageReadError, match="empty input"):
        decode_image(b"")


def test_not_an_image_with_an_image_name(tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("patient 12, smear 3: check eosinophils\n")
    with pytest.raises(ImageReadError, match=r"notes\.jpg: not a recognized image format"):
        decode_image(fake)


def test_random_bytes():
    with pytest.raises(ImageReadError, match="not a recognized image format"):
        decode_image(np.random.default_rng(7).bytes(4096))


def test_decompression_bomb_is_refused_before_decoding():
    bomb = png_header_only(60000, 60000)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        decode_image(bomb)


def test_own_pixel_limit(cell):
    data = encode(Image.fromarray(cell[1]), "PNG")
    with pytest.raises(ImageReadError, match="more than the limit of 1,000"):
        decode_image(data, max_pixels=1000)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        decode_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageReadError, match="is a directory"):
        decode_image(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="file permissions do not stop root (this run is root), nor apply off POSIX")
def test_unreadable_permissions(cell, tmp_path):
    locked = tmp_path / "locked.jpg"
    locked.write_bytes(cell[0].read_bytes())
    locked.chmod(0)
    try:
        with pytest.raises(ImageReadError, match="permission denied"):
            decode_image(locked)
    finally:
        locked.chmod(0o600)


def test_unsupported_source_type():
    with pytest.raises(ImageReadError, match="cannot read an image from a int"):
        decode_image(12)


def test_batch_keeps_order_and_isolates_failures(cell, tmp_path):
    path, rgb = cell
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not a png")
    sources = [path, fake, path.read_bytes(), tmp_path / "missing.bmp", tmp_path, png_header_only(60000, 60000), path]
    results = decode_images(sources, num_threads=3)
    assert len(results) == len(sources)
    ok = [0, 2, 6]
    for i, result in enumerate(results):
        if i in ok:
            np.testing.assert_array_equal(result, rgb)
        else:
            assert isinstance(result, ImageReadError)
    assert results[1].source.endswith("fake.png") and "not a recognized" in results[1].reason
    assert "file not found" in results[3].reason
    assert "directory" in results[4].reason
    assert "decompression bomb" in results[5].reason


# --- JPEG through simplejpeg: the same pixels as Pillow, strict about corrupt data ----------

def scan_start(data: bytes) -> int:
    """Where a baseline JPEG's entropy-coded data begins (after the SOS header)."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


def corrupt_scan(data: bytes, length: int = 400) -> bytes:
    """``data`` with ``length`` bytes zeroed in the middle of its scan data
    (a lost disk block, say); headers and the end-of-image marker intact.
    (Fewer bytes flipped are often decoded without any warning from libjpeg:
    the Huffman decoder falls back into step.)"""
    start, end = scan_start(data), len(data) - 2
    assert data[end:] == b"\xff\xd9" and end - start > 2 * length
    broken = bytearray(data)
    middle = (start + end) // 2
    broken[middle:middle + length] = bytes(length)
    assert bytes(broken[end:]) == b"\xff\xd9" and bytes(broken[:start]) == data[:start]
    return bytes(broken)


def test_simplejpeg_is_used_and_gives_pillows_pixels_on_every_sample(sample_paths, cell_images):
    pytest.importorskip("simplejpeg")
    from wbc_edge import decode

    assert decode.USE_SIMPLEJPEG
    for path, rgb in zip(sample_paths, cell_images):
        np.testing.assert_array_equal(decode_image(path), rgb, err_msg=str(path))


def test_jpeg_colour_spaces_and_progressive_match_pillow(cell):
    _, rgb = cell
    image = Image.fromarray(rgb)
    cases = {"gray": encode(image.convert("L"), "JPEG"), "progressive": encode(image, "JPEG", progressive=True),
             "444": encode(image, "JPEG", subsampling=0), "422": encode(image, "JPEG", subsampling=1),
             "rgb": encode(image, "JPEG", keep_rgb=True), "cmyk": encode(image.convert("CMYK"), "JPEG")}
    for name, data in cases.items():
        with Image.open(io.BytesIO(data)) as reference:
            expected = np.asarray(reference if reference.mode == "L" else reference.convert("RGB"))
        np.testing.assert_array_equal(decode_image(data), expected, err_msg=name)


def test_corrupt_entropy_data_is_an_error_with_libjpegs_message(cell, tmp_path):
    pytest.importorskip("simplejpeg")
    path, _ = cell
    broken = tmp_path / "corrupt-scan.jpg"
    broken.write_bytes(corrupt_scan(path.read_bytes()))
    with Image.open(broken) as image:  # what Pillow alone does: decodes it without a word
        image.load()
    with pytest.raises(ImageReadError, match=r"corrupt-scan\.jpg: corrupt or truncated image \(libjpeg: Corrupt "
                                             r"JPEG data: .*\)"):
        decode_image(broken)
    with pytest.raises(ImageReadError, match=r"libjpeg: Corrupt JPEG data"):
        decode_image(broken.read_bytes())


def test_every_sample_with_corrupt_scan_data_is_refused(sample_paths):
    pytest.importorskip("simplejpeg")
    for path in sample_paths:
        data = corrupt_scan(path.read_bytes())
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # Pillow: no error
        with pytest.raises(ImageReadError, match="libjpeg: Corrupt JPEG data"):
            decode_image(data)


def test_cmyk_jpeg_with_corrupt_data_is_refused_too(cell):
    pytest.importorskip("simplejpeg")
    _, rgb = cell
    with pytest.raises(ImageReadError, match="libjpeg: Corrupt JPEG data"):
        decode_image(corrupt_scan(encode(Image.fromarray(rgb).convert("CMYK"), "JPEG")))


def test_jpeg_without_its_end_marker_is_refused(cell):
    pytest.importorskip("simplejpeg")
    path, _ = cell
    with pytest.raises(ImageReadError, match=r"libjpeg: Premature end of JPEG file"):
        decode_image(path.read_bytes()[:-2])


def test_corrupt_jpeg_in_a_run_is_reported_and_the_others_classified(tmp_path):
    pytest.importorskip("simplejpeg")
    import json

    from wbc_edge.cli import main

    from .conftest import REPO

    cells = sorted((REPO / "examples").glob("*.jpg"))[:5]
    folder = tmp_path / "cells"
    folder.mkdir()
    for cell in cells:
        (folder / cell.name).write_bytes(cell.read_bytes())
    (folder / "corrupt.jpg").write_bytes(corrupt_scan(cells[0].read_bytes()))
    assert main(["classify", str(folder), "--out", str(tmp_path / "r.json"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    by_name = {Path(image["path"]).name: image for image in report["images"]}
    assert report["differential"]["total"] == len(cells) and report["differential"]["errors"] == 1
    assert by_name["corrupt.jpg"]["label"] is None and "libjpeg: Corrupt JPEG data" in by_name["corrupt.jpg"]["error"]
    assert all(by_name[c.name]["label"] and not by_name[c.name]["error"] for c in cells)


def test_huge_jpeg_scaled_in_the_dct_as_pillows_draft(cell):
    from wbc_edge import decode

    _, rgb = cell
    for side in (2100, 4800):
        data = encode(Image.fromarray(rgb).resize((side, side + 7)), "JPEG", quality=90)
        with Image.open(io.BytesIO(data)) as image:
            factor = decode._reduction(image.size, (128, 128))
            image.draft("RGB", (side // factor, (side + 7) // factor))
            expected = np.asarray(image.convert("RGB"))
        got = decode_image(data, reduce_to=(128, 128))
        assert min(got.shape[:2]) >= 8 * 128
        np.testing.assert_array_equal(got, expected)


def test_header_turbojpeg_cannot_read_goes_to_pillow():
    with pytest.raises(ImageReadError, match="not a recognized image format|corrupt or truncated"):
        decode_image(b"\xff\xd8\xff\xe0" + b"garbage" * 10)


def test_unseekable_jpeg_stream_still_decodes(cell):
    path, rgb = cell

    class Pipe(io.RawIOBase):
        def __init__(self, data):
            self._data = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, buffer):
            chunk = self._data.read(len(buffer))
            buffer[:len(chunk)] = chunk
            return len(chunk)

    np.testing.assert_array_equal(decode_image(io.BufferedReader(Pipe(path.read_bytes()))), rgb)
