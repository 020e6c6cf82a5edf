"""Finding image files on disk."""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: File name endings treated as images when a folder is scanned (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def is_image_name(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def find_images(root: str | os.PathLike, errors: list | None = None) -> list[Path]:
    """Image files under ``root``, recursively, in a stable (sorted) order.
    Other files are ignored; unreadable sub-folders are skipped, and listed
    as ``(path, reason)`` in ``errors`` when a list is given."""
    found = []

    def skipped(error: OSError) -> None:
        if errors is not None:
            errors.append((Path(error.filename), error.strerror or str(error)))

    for folder, subfolders, names in os.walk(root, onerror=skipped, followlinks=False):
        subfolders.sort()
        found.extend(Path(folder) / name for name in sorted(names) if is_image_name(name))
    return found



def describe_kind(mode: int) -> str:
    """What a non-regular file is, for messages: ``"a directory"``, ``"a FIFO (named pipe)"``..."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"
