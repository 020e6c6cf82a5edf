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
