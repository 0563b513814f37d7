"""The bundled ToyWorld weights (committed in the package) and loaders for any ToyWorld folder."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ace_erasure.errors import ModelLoadError
from ace_erasure.toyworld.judge import Judge


def bundled_dir() -> Path:
    """The ToyWorld folder shipped inside the package (``model/``, ``judge/``, manifest)."""
    return Path(str(resources.files("ace_erasure.toyworld").joinpath("weights")))


def is_toyworld_folder(path: str | Path) -> bool:
    """True for a folder written by ``ace-erasure toyworld train`` (or the bundled one)."""
    folder = Path(path)
    return (folder / "manifest.json").is_file() and (
        folder / "model" / "model_index.json"
    ).is_file()


def toyworld_folder_of(model_path: str | Path) -> Path | None:
    """The ToyWorld folder a model path belongs to (the folder itself or its ``model/``)."""
    path = Path(model_path)
    for candidate in (path, path.parent):
        if is_toyworld_folder(candidate):
            return candidate
    return None


def _folder(folder: str | Path | None) -> Path:
    path = Path(folder) if folder is not None else bundled_dir()
    if not path.exists():
        raise ModelLoadError(f"ToyWorld folder {path} does not exist")
    if not is_toyworld_folder(path):
        hint = (
            " (the bundled weights are missing: run `ace-erasure toyworld train`)"
            if folder is None
            else ""
        )
        raise ModelLoadError(f"{path} is not a ToyWorld folder: no manifest.json + model/{hint}")
    return path


def manifest(folder: str | Path | None = None) -> dict:
    """The manifest of a ToyWorld folder (bundled by default): configs, hashes, accuracies."""
    return json.loads((_folder(folder) / "manifest.json").read_text())


def load_pipeline(folder: str | Path | None = None):
    """The ToyWorld ``StableDiffusionPipeline`` (bundled by default), on CPU, float32."""
    from ace_erasure.models.loading import load_pipeline as load_any

    return load_any(_folder(folder) / "model")


def load_judge(folder: str | Path | None = None) -> Judge:
    """The judge of a ToyWorld folder (bundled by default)."""
    return Judge.load(_folder(folder) / "judge")
