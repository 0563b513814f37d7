"""File helpers shared by everything that writes user-facing output."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ace_erasure.errors import OutputError


def normal_permissions(folder: Path) -> None:
    """Give a finished output folder the permissions of the user's umask (0755 / 0644 usually).

    ``tempfile.mkdtemp`` and safetensors create owner-only files; an artefact meant to be shared
    (an erasure, a trained model) should not be.
    """
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # what PIL writes


def _writable_ancestor(path: Path) -> None:
    """Raise OutputError unless the nearest existing ancestor of ``path`` is a writable folder
    (so the folders up to ``path`` can be created and written)."""
    parent = path.parent
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} is a file, not a folder")
    try:  # the truth, also for root and read-only file systems: try it
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputError(f"cannot write {path}: {parent} is not writable ({reason})") from error


def check_output_file(path: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> Path:
    """Check, before any work, that ``path`` can be written as a file of one of ``suffixes``
    (an existing file is replaced at the end; an existing folder is an error)."""
    out = Path(path)
    if out.is_dir():
        raise OutputError(f"{out} is a folder; give a file name such as {out / 'image.png'}")
    if out.suffix.lower() not in suffixes:
        raise OutputError(
            f"{out}: unknown file type {out.suffix or '(none)'!r}; use one of {', '.join(suffixes)}"
        )
    if out.exists() and not os.access(out, os.W_OK):
        raise OutputError(f"cannot write {out}: the file is read-only")
    _writable_ancestor(out)
    return out


def check_output_folder(path: str | Path, *, overwrite: bool) -> Path:
    """Check, before any work, that the folder ``path`` can be written: it does not exist, is
    empty, or ``overwrite`` allows replacing it; it is not a file; its parent is writable."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file, not a folder (choose another --out)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"{out} already exists and is not empty (use --overwrite to replace it)")
    _writable_ancestor(out)
    return out
