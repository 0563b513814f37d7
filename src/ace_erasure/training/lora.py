"""Trainable gated LoRA adapters on a pipeline, through PEFT.

:func:`attach` adds a PEFT LoRA adapter on chosen modules of any component (``unet.…`` or
``text_encoder.…`` keys, as in :class:`~ace_erasure.erasure.Erasure`), optionally initialised
from existing edits, with a trainable gate per block of output rows (``W + diag(g) B A``: a
parametrisation of PEFT's ``lora_B`` weight). The frozen teacher is the same pipeline with the
adapter disabled (:meth:`TrainableLora.disabled`), so no second copy of the model is held.
:meth:`TrainableLora.edits` reads the trained factors back as module edits, and
:meth:`TrainableLora.remove` takes the adapter out, leaving the pipeline as it was.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ace_erasure.erasure import ModuleEdit
from ace_erasure.errors import ConfigError
from ace_erasure.models.plumbing import base_linear


class _RowGate(nn.Module):
    """``B -> diag(repeat(g)) B``: the gate ``g`` (groups,) scales blocks of B's rows."""

    def __init__(self, gate: torch.Tensor) -> None:
        super().__init__()
        self.gate = nn.Parameter(gate.detach().float().clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        rows = self.gate.repeat_interleave(weight.shape[0] // len(self.gate))
        return weight * rows.to(weight.dtype).unsqueeze(1)


class TrainableLora:
    """A gated LoRA adapter being trained in a pipeline (see the module docstring)."""

    def __init__(
        self,
        pipe,
        adapter_name: str,
        modules: dict[str, Any],
        trainable: dict[str, dict[str, bool]] | None = None,
    ) -> None:
        self.pipe, self.adapter_name, self.modules = pipe, adapter_name, modules
        # PEFT freezes every base parameter when it adds an adapter: what to give back
        self.trainable = trainable or {}

    def _parts(self, key: str) -> tuple[Any, Any]:  # PEFT's lora_A / lora_B linears
        module: Any = self.modules[key]
        return module.lora_A[self.adapter_name], module.lora_B[self.adapter_name]

    def factor_parameters(self) -> dict[str, nn.Parameter]:
        """``<key>.down`` (A) and ``<key>.up`` (B, ungated) of every module."""
        params = {}
        for key in self.modules:
            a, b = self._parts(key)
            params[f"{key}.down"] = a.weight
            params[f"{key}.up"] = b.parametrizations.weight.original
        return params

    def gate_parameters(self) -> dict[str, nn.Parameter]:
        """``<key>.gate`` of every module."""
        return {
            f"{key}.gate": self._parts(key)[1].parametrizations.weight[0].gate
            for key in self.modules
        }

    def edits(self) -> dict[str, ModuleEdit]:
        """The current factors and gates as module edits (detached copies, float32)."""
        out = {}
        for key in self.modules:
            a, b = self._parts(key)
            gate = b.parametrizations.weight[0].gate
            out[key] = ModuleEdit(
                a.weight.detach().float().clone(),
                b.parametrizations.weight.original.detach().float().clone(),
                gate.detach().float().clone(),
            )
        return out

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Within the block the pipeline is the frozen base model (the teacher)."""
        components = self._components()
        for component in components:
            component.disable_adapters()
        try:
            yield
        finally:
            for component in components:
                component.enable_adapters()

    def _components(self) -> list[Any]:
        names = sorted({key.split(".", 1)[0] for key in self.modules})
        return [getattr(self.pipe, name) for name in names]

    def remove(self) -> None:
        """Delete the adapter; the pipeline's modules are plain again."""
        for key in self.modules:
            _, b = self._parts(key)
            parametrize.remove_parametrizations(b, "weight", leave_parametrized=False)
        components = sorted({key.split(".", 1)[0] for key in self.modules})
        for component in self._components():
            component.delete_adapters(self.adapter_name)
            _unwrap_empty_lora_layers(component)
        for component in components:
            flags = self.trainable.get(component, {})
            for name, param in getattr(self.pipe, component).named_parameters():
                if name in flags:
                    param.requires_grad_(flags[name])
        self.modules = {}


def _unwrap_empty_lora_layers(component: Any) -> None:
    """Replace PEFT layers that hold no adapter any more by their base layer."""
    for name, module in list(component.named_modules()):
        base = getattr(module, "base_layer", None)
        if base is not None and not getattr(module, "lora_A", {}):
            parent_name, _, child = name.rpartition(".")
            parent = component.get_submodule(parent_name) if parent_name else component
            setattr(parent, child, base)
    if hasattr(component, "peft_config") and not component.peft_config:
        del component.peft_config
        component._hf_peft_config_loaded = False


def attach(
    pipe,
    keys: Sequence[str],
    rank: int,
    *,
    adapter_name: str = "ace_erasure_training",
    init: Mapping[str, ModuleEdit] | None = None,
    gate_groups: Mapping[str, int] | None = None,
    seed: int = 0,
) -> TrainableLora:
    """Add a trainable gated LoRA adapter of ``rank`` on the modules ``keys``.

    With ``init`` each module starts from its edit (cut to ``rank``, or with the extra ranks
    started like a fresh LoRA: random A, zero B; gate as given); without, A is random (seeded)
    and B zero, so the pipeline starts unchanged, with gates of 1 in ``gate_groups[key]`` groups
    (default 1).
    """
    from peft import LoraConfig

    if rank < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
    by_component: dict[str, list[str]] = {}
    for key in keys:
        component, path = key.split(".", 1)
        if getattr(pipe, component, None) is None:
            raise ConfigError(f"the pipeline has no {component} to train")
        by_component.setdefault(component, []).append(path)
    generator = torch.Generator().manual_seed(seed)
    trainable = {
        component: {n: p.requires_grad for n, p in getattr(pipe, component).named_parameters()}
        for component in by_component
    }
    modules: dict[str, Any] = {}
    for component, paths in by_component.items():
        owner = getattr(pipe, component)
        pattern = "^(?:" + "|".join(re.escape(p) for p in paths) + ")$"
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=pattern, init_lora_weights=False
        )
        owner.add_adapter(config, adapter_name=adapter_name)
        for path in paths:
            modules[f"{component}.{path}"] = owner.get_submodule(path)
    for key, module in modules.items():
        a = module.lora_A[adapter_name]
        b = module.lora_B[adapter_name]
        out_features, in_features = base_linear(module).weight.shape
        with torch.no_grad():
            bound = 1 / in_features**0.5
            random_down = (torch.rand(a.weight.shape, generator=generator) * 2 - 1) * bound
            if init is not None and key in init:
                edit = init[key]
                r = min(rank, edit.rank)
                # ranks beyond the edit's start like a fresh LoRA (random A, zero B) so that
                # they can learn; a zero A would give them no gradient at all
                a.weight.copy_(random_down)
                b.weight.zero_()
                a.weight[:r] = edit.down[:r].to(a.weight.dtype)
                b.weight[:, :r] = edit.up[:, :r].to(b.weight.dtype)
                gate = edit.gate
            else:
                a.weight.copy_(random_down)
                b.weight.zero_()
                gate = torch.ones((gate_groups or {}).get(key, 1))
        if out_features % len(gate):
            raise ConfigError(f"{len(gate)} gates do not divide the {out_features} rows of {key}")
        parametrize.register_parametrization(b, "weight", _RowGate(gate))
    return TrainableLora(pipe, adapter_name, modules, trainable)
