"""Writing output files safely: the one way every wbc-edge output reaches disk.

:func:`write_atomic` never writes through a symbolic link, never replaces
something that is not a regular file (``/dev/stdout``, a FIFO, a folder), and
never leaves half a file: the bytes go to a temporary file created
exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``, a fresh random name) in the
target's own folder, are flushed to disk (``fsync``), and the temporary file
is renamed over the target. A reader sees the old file or the new one.

:func:`check_output` and :func:`check_outputs` refuse an unusable output path
before any work is done (empty, a folder, a link, not writable, the same file
as an input or as another output), so a long run never ends in a traceback
with its results lost.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Callable

from .errors import WbcEdgeError
from .files import describe_kind


class OutputPathError(WbcEdgeError):
    """An output path that cannot (or must not) be written, and why."""


def check_output(path: str | os.PathLike | None, what: str = "output", *,
                 follow_symlinks: bool = False, make_parents: bool = False) -> Path:
    """``path`` as a Path if it can be written by :func:`write_atomic`, else
    :class:`OutputPathError` with a message that names ``what`` (an option
    such as ``--out``) and the problem.

    Refused: an empty name, a name ending in a separator, an existing
    folder, link (unless ``follow_symlinks``) or non-regular file, a missing
    parent folder (unless ``make_parents``: then the nearest existing folder
    must be writable), a parent folder or existing file this process cannot
    write.
    """
    if path is None or os.fspath(path) == "":
        raise OutputPathError(f"{what}: the file name is empty")
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.endswith(os.sep) or (os.altsep and text.endswith(os.altsep)):
        raise OutputPathError(f"{what} {text!r}: names a folder; give a file name")
    path = Path(text)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as error:
        raise OutputPathError(f"{what} {text!r}: cannot be checked ({error.strerror or error})") from None
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            if not follow_symlinks:
                raise OutputPathError(f"{what} {text!r}: is a symbolic link; refusing to replace it or what it "
                                      "points to (remove the link, or name a regular file)")
            target = Path(os.path.realpath(path))
            return check_output(target, what, follow_symlinks=False, make_parents=False)
        if stat.S_ISDIR(info.st_mode):
            raise OutputPathError(f"{what} {text!r}: is a folder; give a file name")
        if not stat.S_ISREG(info.st_mode):
            raise OutputPathError(f"{what} {text!r}: is {describe_kind(info.st_mode)}, not a regular file; "
                                  "refusing to replace it")
        if not os.access(path, os.W_OK):
            raise OutputPathError(f"{what} {text!r}: the file exists and is not writable (permission denied)")
    parent = path.parent
    if not parent.is_dir():
        if not make_parents:
            raise OutputPathError(f"{what} {text!r}: the folder {os.fspath(parent)!r} does not exist")
        existing = parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise OutputPathError(f"{what} {text!r}: {os.fspath(existing)!r} is not a folder")
        parent = existing
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {text!r}: cannot create files in the folder {os.fspath(parent)!r} "
                              "(permission denied)")
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file: the same inode (hard links, links,
    ``./x`` and ``x``), or, for files not yet there, the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(outputs: Mapping[str, str | os.PathLike | None], inputs: Iterable[str | os.PathLike] = (),
                  *, make_parents: bool = False) -> dict[str, Path]:
    """Checks every given output (``{option: path}``; None entries are not
    given and skipped) with :func:`check_output`, and refuses two outputs that
    are the same file, or an output that is one of ``inputs``. Returns
    ``{option: Path}`` of the given ones."""
    checked = {what: check_output(path, what, make_parents=make_parents)
               for what, path in outputs.items() if path is not None}
    names = list(checked)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            if same_file(checked[first], checked[second]):
                raise OutputPathError(f"{first} and {second} name the same file ({os.fspath(checked[first])!r}); "
                                      "one would overwrite the other")
    existing = {what: path for what, path in checked.items() if path.exists()}
    if existing:
        for item in inputs:
            for what, path in existing.items():
                if same_file(path, item):
                    raise OutputPathError(f"{what} {os.fspath(path)!r}: is an input ({os.fspath(item)!r}); "
                                          "refusing to overwrite it")
    return checked


def write_atomic(path: str | os.PathLike, data: bytes | str | None = None, *,
                 writer: Callable[[IO[bytes]], object] | None = None,
                 follow_symlinks: bool = False, make_parents: bool = False) -> Path:
    """Writes ``data`` (bytes, or text written as UTF-8), or whatever
    ``writer(file)`` writes to the binary file it is given, to ``path``
    atomically (see the module docstring). An existing target keeps its
    permissions. Returns the path written.

    Raises:
        OutputPathError: the target is unusable (see :func:`check_output`).
        OSError: the write itself failed (disk full, ...); the target is
            then untouched and no temporary file is left.
    """
    if (data is None) == (writer is None):
        raise TypeError("write_atomic takes either data or writer")
    path = check_output(path, "output file", follow_symlinks=follow_symlinks, make_parents=make_parents)
    if follow_symlinks:
        path = Path(os.path.realpath(path))
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        mode = stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        mode = None
    folder = path.parent
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise OutputPathError(f"{path}: cannot create a temporary file beside it")
    try:
        with open(tmp, "wb", opener=lambda *_: fd) as f:  # the file object is named by its path
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            if writer is not None:
                writer(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_folder(folder)
    return path


def move_into_place(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Renames a finished file (one this process wrote, in the target's folder)
    over ``target``, after the same checks as :func:`write_atomic`."""
    target = check_output(target, "output file")
    _rename(Path(source), target)
    return target


def publish_directory(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Renames a finished directory (built beside ``target``) to ``target``,
    which must not exist (a caller replacing one removes it first)."""
    source, target = Path(source), Path(target)
    if target.exists() or target.is_symlink():
        raise OutputPathError(f"{target}: exists; refusing to replace it")
    _rename(source, target)
    return target


def _rename(source: Path, target: Path) -> None:
    """The package's one rename into place, made durable."""
    os.replace(source, target)
    _sync_folder(target.parent)


def _sync_folder(folder: Path) -> None:
    """Makes a rename durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
