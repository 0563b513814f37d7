"""File helpers shared by everything that writes user-facing output."""

from __future__ import annotations

import os
from pathlib import Path


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
