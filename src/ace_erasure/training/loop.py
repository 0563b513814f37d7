"""A resumable, seeded optimisation loop.

:class:`Trainer` owns the parameters' optimiser (Adam), one ``torch.Generator`` from which the
step function draws all its randomness, a log of per-step numbers, and checkpoints every
``checkpoint_every`` steps. A run killed at any point and started again with the same folder
continues from its last checkpoint to the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ace_erasure.errors import ConfigError
from ace_erasure.training.checkpoint import Checkpoint, optimizer_tensors, restore_optimizer

logger = logging.getLogger(__name__)
# step function: (step, generator) -> {"loss": scalar tensor to minimise, other: numbers to log}
StepFunction = Callable[[int, torch.Generator], Mapping[str, torch.Tensor | float]]
Progress = Callable[..., None]


@dataclass
class LoopState:
    """What a run has done so far (the log holds one dict of numbers per step)."""

    step: int
    log: list[dict[str, float]]
    seconds: float


class Trainer:
    """Minimise a step function's ``loss`` over ``parameters`` with Adam (see module doc).

    ``extra_state`` / ``load_extra_state`` let the caller checkpoint its own tensors (e.g. an
    inner attack's warm start) with the run. ``config`` is recorded in the checkpoint and a
    resume with another config is refused.
    """

    def __init__(
        self,
        parameters: Mapping[str, torch.nn.Parameter],
        *,
        steps: int,
        lr: float,
        seed: int,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 50,
        grad_clip: float | None = 1.0,
        weight_decay: float = 0.0,
        stage: str = "train",
        progress: Progress | None = None,
        config: Mapping | None = None,
        extra_state: Callable[[], dict[str, torch.Tensor]] | None = None,
        load_extra_state: Callable[[dict[str, torch.Tensor]], None] | None = None,
    ) -> None:
        if steps < 0 or lr <= 0 or not math.isfinite(lr) or checkpoint_every < 1:
            raise ConfigError("training needs steps >= 0, a finite lr > 0, checkpoint_every >= 1")
        self.names = list(parameters)
        self.params = [parameters[n] for n in self.names]
        self.steps, self.seed, self.stage = steps, seed, stage
        self.grad_clip, self.progress = grad_clip, progress
        self.checkpoint = Checkpoint(checkpoint_dir, stage) if checkpoint_dir else None
        self.checkpoint_every = checkpoint_every
        self.config = dict(config or {})
        self.extra_state, self.load_extra_state = extra_state, load_extra_state
        self.optimizer = torch.optim.Adam(self.params, lr=lr, weight_decay=weight_decay)
        self.generator = torch.Generator().manual_seed(seed)
        self.state = LoopState(0, [], 0.0)

    def _save(self, elapsed: float) -> None:
        assert self.checkpoint is not None
        tensors = {f"param.{n}": p.detach() for n, p in zip(self.names, self.params)}
        tensors |= optimizer_tensors(self.optimizer, self.params)
        tensors["generator"] = self.generator.get_state()
        tensors |= {
            f"extra.{k}": v for k, v in (self.extra_state() if self.extra_state else {}).items()
        }
        meta = {
            "step": self.state.step,
            "log": self.state.log,
            "seconds": elapsed,
            "seed": self.seed,
            "config": self.config,
        }
        self.checkpoint.save(tensors, meta)

    def _resume(self) -> None:
        if self.checkpoint is None or not self.checkpoint.exists():
            return
        tensors, meta = self.checkpoint.load()
        if meta.get("seed") != self.seed or meta.get("config") != self.config:
            raise ConfigError(
                f"{self.checkpoint.meta_path} holds another run (its seed, concepts, base "
                "model or config differ); remove it or use another folder"
            )
        with torch.no_grad():
            for name, param in zip(self.names, self.params):
                param.copy_(tensors[f"param.{name}"])
        restore_optimizer(self.optimizer, self.params, tensors)
        self.generator.set_state(tensors["generator"])
        if self.load_extra_state:
            self.load_extra_state(
                {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
            )
        self.state = LoopState(int(meta["step"]), list(meta["log"]), float(meta["seconds"]))
        logger.info("%s: resuming at step %d", self.stage, self.state.step)

    def run(self, step_fn: StepFunction) -> LoopState:
        """Run (or resume) to ``steps``; returns the state with the per-step log."""
        self._resume()
        start, before = time.perf_counter(), self.state.seconds
        while self.state.step < self.steps:
            numbers = step_fn(self.state.step, self.generator)
            loss = numbers["loss"]
            assert isinstance(loss, torch.Tensor)
            if not torch.isfinite(loss):
                raise ConfigError(
                    f"{self.stage}: the loss became {float(loss.detach())} at step "
                    f"{self.state.step}; lower the learning rate"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.optimizer.step()
            self.state.step += 1
            self.state.log.append(
                {
                    k: round(float(v.detach() if isinstance(v, torch.Tensor) else v), 6)
                    for k, v in numbers.items()
                }
            )
            elapsed = before + time.perf_counter() - start
            if self.progress:
                self.progress(self.stage, self.state.step, self.steps, self.state.log[-1])
            if self.checkpoint and (
                self.state.step % self.checkpoint_every == 0 or self.state.step == self.steps
            ):
                self._save(elapsed)
        self.state.seconds = before + time.perf_counter() - start
        return self.state
