"""Atomic checkpoints: tensors in safetensors, the rest in JSON, written then renamed.

A training run that is killed leaves either its previous checkpoint or the new one, never half
of one; with the optimiser's state and every random generator's state saved, a resumed run
continues to the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """Write ``tensors`` to ``path`` (safetensors) through a temporary file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(
        {k: v.detach().contiguous() for k, v in tensors.items()},
        str(tmp),
        metadata={k: str(v) for k, v in (metadata or {}).items()},
    )
    tmp.replace(path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def optimizer_tensors(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> dict:
    """Adam(W)'s per-parameter state as flat tensors (``opt.<i>.exp_avg`` ...)."""
    tensors = {}
    for i, p in enumerate(params):
        state = optimizer.state.get(p)
        if state:
            tensors[f"opt.{i}.exp_avg"] = state["exp_avg"]
            tensors[f"opt.{i}.exp_avg_sq"] = state["exp_avg_sq"]
            tensors[f"opt.{i}.step"] = torch.as_tensor(state["step"]).reshape(1).float()
    return tensors


def restore_optimizer(optimizer: torch.optim.Optimizer, params: list, tensors: dict) -> None:
    """Put back what :func:`optimizer_tensors` saved."""
    for i, p in enumerate(params):
        if f"opt.{i}.exp_avg" in tensors:
            optimizer.state[p] = {
                "exp_avg": tensors[f"opt.{i}.exp_avg"].clone(),
                "exp_avg_sq": tensors[f"opt.{i}.exp_avg_sq"].clone(),
                "step": tensors[f"opt.{i}.step"].reshape(()).clone(),
            }


class Checkpoint:
    """A checkpoint at ``folder``: ``<name>.safetensors`` + ``<name>.json``."""

    def __init__(self, folder: str | Path, name: str = "checkpoint") -> None:
        self.folder = Path(folder)
        self.tensors_path = self.folder / f"{name}.safetensors"
        self.meta_path = self.folder / f"{name}.json"

    def exists(self) -> bool:
        return self.tensors_path.is_file() and self.meta_path.is_file()

    def save(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Tensors first, then the JSON that marks the checkpoint complete."""
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_save(tensors, self.tensors_path)
        atomic_write_text(self.meta_path, json.dumps(meta))

    def load(self) -> tuple[dict[str, torch.Tensor], dict]:
        return load_file(str(self.tensors_path)), json.loads(self.meta_path.read_text())
