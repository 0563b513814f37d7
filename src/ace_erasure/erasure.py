"""The result of an erasure: per-module low-rank edits with gates, and how they were made.

An :class:`Erasure` is a frozen value. Each edited module (any ``nn.Linear`` of the UNet or of a
text encoder: cross-attention keys/values for ACE, self-attention or feed-forward layers for
ESD-u, text-encoder projections for a text-encoder LoRA) has a :class:`ModuleEdit`
``W' = W + diag(g) · up · down``: low-rank factors, and gates ``g`` kept apart from them (one
per layer, or one per head = per block of output rows) so that training can move either.

On disk an erasure is a folder::

    pytorch_lora_weights.safetensors   a standard diffusers LoRA, keys per component
                                       (``unet.…``, ``text_encoder.…``), gates folded into B
    erasure.json                       concepts, method, config, stages, seed, base fingerprint
    method_tensors.safetensors         tensors only the method's own code uses (optional)
    README.md, grid.png                a model card with a before/after grid (optional)

``pipe.load_lora_weights(folder)`` in stock diffusers loads it. :meth:`Erasure.apply` does the
same through the same public API (a named adapter: erasures compose, ``set_adapters`` scales
them) and :meth:`Erasure.fuse` merges into the weights; both first check that the pipeline is
the base model the erasure was made for, and both return a handle whose ``remove()`` (or the
end of a ``with`` block) restores the pipeline bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ace_erasure._version import __version__
from ace_erasure.concepts import Concept
from ace_erasure.errors import AceError, WeightsError
from ace_erasure.io import normal_permissions
from ace_erasure.models.plumbing import base_linear, fingerprint, fingerprint_difference

LORA_FILE = "pytorch_lora_weights.safetensors"
METHOD_TENSORS_FILE = "method_tensors.safetensors"
RECORD_FILE = "erasure.json"
FORMAT_VERSION = 2
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
_KEY = re.compile(
    r"^(?P<component>unet|text_encoder|text_encoder_2)\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$"
)


@dataclass(frozen=True)
class ModuleEdit:
    """``W' = W + diag(gate_rows) · up · down`` for one linear module.

    ``down`` is (rank, in), ``up`` (out, rank), ``gate`` (groups,): gate ``i`` scales output rows
    ``[i·out/groups, (i+1)·out/groups)`` (one group per attention head for per-head gates, one
    for the whole layer). An erasure read from disk has its gates folded into ``up`` (gate 1);
    its stage records keep the values.
    """

    down: torch.Tensor
    up: torch.Tensor
    gate: torch.Tensor = field(default_factory=lambda: torch.ones(1))

    def __post_init__(self) -> None:
        if self.down.ndim != 2 or self.up.ndim != 2 or self.up.shape[1] != self.down.shape[0]:
            raise ValueError(
                f"factors must be up (out, r) and down (r, in), got {tuple(self.up.shape)} "
                f"and {tuple(self.down.shape)}"
            )
        if self.gate.ndim != 1 or self.up.shape[0] % len(self.gate):
            raise ValueError(f"{len(self.gate)} gates do not divide {self.up.shape[0]} rows")

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the edited weight."""
        return int(self.up.shape[0]), int(self.down.shape[1])

    def gate_rows(self) -> torch.Tensor:
        """(out,) the gate of every output row, float64."""
        return self.gate.double().repeat_interleave(self.up.shape[0] // len(self.gate))

    def lora_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lora_A, lora_B) = (down, diag(g) · up) in float32: the gate folded in (in float64)."""
        return self.down.float(), (self.up.double() * self.gate_rows().unsqueeze(1)).float()

    def delta(self) -> torch.Tensor:
        """The dense edit (out, in) in float32, as the saved LoRA applies it."""
        down, up = self.lora_factors()
        return up @ down


@dataclass(frozen=True)
class StageRecord:
    """One stage that produced an erasure: its name, wall time and what it measured."""

    name: str
    seconds: float
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "seconds": round(self.seconds, 4), "stats": self.stats}


def _module(pipe, key: str) -> torch.nn.Module:
    """The module ``component.path`` of ``pipe`` (e.g. ``unet.down_blocks.0…attn2.to_k``)."""
    component, path = key.split(".", 1)
    owner = getattr(pipe, component, None)
    if owner is None:
        raise WeightsError(f"this erasure edits the {component}, which this pipeline does not have")
    try:
        return owner.get_submodule(path)
    except AttributeError as error:
        raise WeightsError(
            f"this erasure edits {key}, which this model does not have: made for another model"
        ) from error


@dataclass(frozen=True)
class Erasure:
    """Per-module gated low-rank edits and their provenance (see the module docstring).

    ``edits`` maps ``component.module_path`` (``unet.down_blocks.1…attn2.to_k``) to its edit.
    ``base_fingerprint`` maps each part of the base model the erasure depends on to a hash
    (:func:`~ace_erasure.models.plumbing.fingerprint`). ``stages`` records what made it.
    ``method_tensors`` / ``method_data`` belong to the method (e.g. an optional inference-time
    processor); nothing here reads them.
    """

    edits: Mapping[str, ModuleEdit]
    concepts: tuple[Concept, ...]
    method: str
    config: dict
    seed: int
    base_fingerprint: dict[str, str]
    family: str
    stages: tuple[StageRecord, ...] = ()
    stats: dict = field(default_factory=dict)
    library_version: str = __version__
    method_tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)
    method_data: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.edits:
            raise ValueError("an erasure needs at least one module edit")
        for key in self.edits:
            if key.split(".", 1)[0] not in COMPONENTS:
                raise ValueError(f"edit {key!r}: component must be one of {', '.join(COMPONENTS)}")
        object.__setattr__(self, "concepts", tuple(self.concepts))
        object.__setattr__(self, "stages", tuple(self.stages))

    @classmethod
    def create(
        cls,
        pipe,
        edits: Mapping[str, ModuleEdit],
        *,
        concepts: Sequence[Concept],
        method: str,
        config: dict,
        seed: int,
        stages: Sequence[StageRecord] = (),
        stats: dict | None = None,
        method_tensors: Mapping[str, torch.Tensor] | None = None,
        method_data: dict | None = None,
    ) -> Erasure:
        """An erasure of ``pipe``: fingerprint and family are read from the pipeline."""
        from ace_erasure.models.plumbing import model_family

        return cls(
            edits=dict(edits),
            concepts=tuple(concepts),
            method=method,
            config=config,
            seed=seed,
            base_fingerprint=fingerprint(pipe, list(edits)),
            family=model_family(pipe),
            stages=tuple(stages),
            stats=stats or {},
            method_tensors=dict(method_tensors or {}),
            method_data=method_data or {},
        )

    # ---------------------------------------------------------------- properties
    @property
    def rank(self) -> int:
        """The largest rank of any module edit."""
        return max(edit.rank for edit in self.edits.values())

    @property
    def components(self) -> list[str]:
        """The pipeline components this erasure edits ("unet", "text_encoder", ...)."""
        return sorted({key.split(".", 1)[0] for key in self.edits})

    @property
    def adapter_name(self) -> str:
        """A stable adapter name: the method and the concepts ("ace_circle_square")."""
        slug = "_".join(
            re.sub(r"[^a-z0-9]+", "-", c.name.lower()).strip("-") for c in self.concepts
        )
        return f"{self.method}_{slug}"[:64]

    def delta(self, key: str) -> torch.Tensor:
        """The dense edit (out, in) of one module, float32."""
        return self.edits[key].delta()

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """diffusers/PEFT LoRA keys: ``<component>.<module>.lora_A.weight`` = down, ``lora_B`` =
        the gated up factor."""
        state = {}
        for key in sorted(self.edits):
            down, up = self.edits[key].lora_factors()
            state[f"{key}.lora_A.weight"] = down.contiguous()
            state[f"{key}.lora_B.weight"] = up.contiguous()
        return state

    # ---------------------------------------------------------------- applying
    def check_compatible(self, pipe, *, force: bool = False) -> None:
        """Raise WeightsError unless ``pipe`` is the base model this erasure was made for.

        Module shapes are always checked; ``force`` skips the fingerprint comparison (the
        caller should record that it did)."""
        for key, edit in self.edits.items():
            weight = base_linear(_module(pipe, key)).weight
            if tuple(weight.shape) != edit.shape:
                raise WeightsError(
                    f"{key} is {tuple(weight.shape)} here but {edit.shape} in the erasure: "
                    "made for another model"
                )
        if force:
            return
        differs = fingerprint_difference(self.base_fingerprint, fingerprint(pipe, list(self.edits)))
        if differs:
            raise WeightsError(
                f"this erasure was made for another base model: its {', '.join(differs)} differ "
                "(remove other fused erasures first, erase again on this model, or use --force)"
            )

    def apply(
        self,
        pipe,
        scale: float = 1.0,
        adapter_name: str | None = None,
        *,
        force: bool = False,
    ) -> AppliedErasure:
        """Load as a LoRA adapter (diffusers' ``load_lora_weights``); returns the handle that
        removes it.

        Adapters already loaded stay active, so several erasures compose; ``scale`` is the
        erasure strength (``pipe.set_adapters`` changes it later).
        """
        self.check_compatible(pipe, force=force)
        name = adapter_name or self.adapter_name
        active = list(pipe.get_active_adapters()) if hasattr(pipe, "get_active_adapters") else []
        if name in active or name in _all_adapters(pipe):
            raise AceError(
                f"an adapter named {name!r} is already loaded; remove it first or pick another name"
            )
        weights = _adapter_weights(pipe, active)
        flags = _trainable_flags(pipe, self.components)
        state = {
            k: v.to(getattr(pipe, k.split(".", 1)[0]).dtype)
            for k, v in self.lora_state_dict().items()
        }
        with _quiet_diffusers():  # it warns about components that get no LoRA keys (by design)
            pipe.load_lora_weights(state, adapter_name=name)
        pipe.set_adapters([*active, name], adapter_weights=[*weights, scale])
        return AppliedErasure(pipe, name, flags)

    def fuse(self, pipe, scale: float = 1.0, *, force: bool = False) -> FusedErasure:
        """Merge the edit into the base weights (no adapter at inference); the handle's
        ``remove()`` restores the original weights bit for bit."""
        self.check_compatible(pipe, force=force)
        backups: dict[str, torch.Tensor] = {}
        try:
            with torch.no_grad():
                for key in sorted(self.edits):
                    linear = base_linear(_module(pipe, key))
                    backups[key] = linear.weight.detach().clone()
                    edit = self.delta(key).to(torch.float64) * scale
                    linear.weight.copy_(
                        (linear.weight.to(torch.float64) + edit.to(linear.weight.device)).to(
                            linear.weight.dtype
                        )
                    )
        except BaseException:
            FusedErasure(pipe, backups).remove()
            raise
        return FusedErasure(pipe, backups)

    # ---------------------------------------------------------------- saving
    def record(self) -> dict:
        """What ``erasure.json`` holds."""
        return {
            "format_version": FORMAT_VERSION,
            "library": "ace-erasure",
            "library_version": self.library_version,
            "method": self.method,
            "concepts": [c.to_dict() for c in self.concepts],
            "config": self.config,
            "seed": self.seed,
            "base_fingerprint": self.base_fingerprint,
            "family": self.family,
            "rank": self.rank,
            "modules": {
                key: {"rank": e.rank, "shape": list(e.shape), "gates": e.gate.tolist()}
                for key, e in sorted(self.edits.items())
            },
            "stages": [s.to_dict() for s in self.stages],
            "stats": self.stats,
            "method_tensors": METHOD_TENSORS_FILE if self.method_tensors else None,
            "method_data": self.method_data,
            "versions": _versions(),
        }

    def save(
        self, directory: str | Path, *, card: str | None = None, grid=None, overwrite: bool = False
    ) -> Path:
        """Write the erasure folder atomically (a temporary folder renamed into place)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        out = Path(directory)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
            raise AceError(f"{out} already exists and is not empty (use --overwrite to replace it)")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            layers: dict[str, dict[str, torch.Tensor]] = {}
            for key, tensor in self.lora_state_dict().items():
                component, rest = key.split(".", 1)
                layers.setdefault(component, {})[rest] = tensor
            saver = StableDiffusionXLPipeline if self.family == "sdxl" else StableDiffusionPipeline
            # No adapter metadata: diffusers infers r from the shapes and alpha defaults to r
            # (scale 1, same in old and new diffusers). With a second metadata key, safetensors'
            # header order varies between calls, and the same seed must give the same bytes.
            saver.save_lora_weights(
                tmp, **{f"{component}_lora_layers": v for component, v in layers.items()}
            )
            (tmp / RECORD_FILE).write_text(json.dumps(self.record(), indent=2) + "\n")
            if self.method_tensors:
                save_file(
                    {k: v.contiguous() for k, v in self.method_tensors.items()},
                    str(tmp / METHOD_TENSORS_FILE),
                )
            if grid is not None:
                grid.save(tmp / "grid.png")
            (tmp / "README.md").write_text(card or model_card(self, has_grid=grid is not None))
            normal_permissions(tmp)
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            tmp.replace(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def load(cls, directory: str | Path) -> Erasure:
        """Read an erasure folder; a missing, corrupt or foreign file gives a WeightsError."""
        folder = Path(directory)
        if not folder.is_dir():
            raise WeightsError(f"erasure folder {folder} does not exist")
        lora, record_file = folder / LORA_FILE, folder / RECORD_FILE
        if not lora.is_file():
            raise WeightsError(f"{folder} has no {LORA_FILE}: not an erasure folder")
        if not record_file.is_file():
            raise WeightsError(f"{folder} has no {RECORD_FILE}: not an ace-erasure folder")
        try:
            record = json.loads(record_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise WeightsError(f"{record_file} is corrupt: {error}") from error
        record = _checked_record(record, record_file)
        factors: dict[str, dict[str, torch.Tensor]] = {}
        try:
            with safe_open(str(lora), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    match = _KEY.match(key)
                    if not match:
                        raise WeightsError(
                            f"{lora} holds an unexpected tensor {key!r}: not an ace-erasure LoRA"
                        )
                    module = f"{match['component']}.{match['module']}"
                    factors.setdefault(module, {})[match["part"]] = f.get_tensor(key).float()
        except WeightsError:
            raise
        except Exception as error:
            raise WeightsError(f"{lora} is corrupt or not a safetensors file: {error}") from error
        edits = {}
        for key, parts in factors.items():
            if set(parts) != {"A", "B"}:
                raise WeightsError(f"{lora} is incomplete: {key} lacks its lora_A or lora_B")
            try:
                edits[key] = ModuleEdit(parts["A"], parts["B"])
            except ValueError as error:
                raise WeightsError(f"{lora}: {key}: {error}") from error
        if not edits:
            raise WeightsError(f"{lora} holds no LoRA factors")
        method_tensors: dict[str, torch.Tensor] = {}
        if record.get("method_tensors"):
            path = folder / METHOD_TENSORS_FILE
            try:
                method_tensors = load_file(str(path))
            except Exception as error:
                raise WeightsError(f"{path} is missing or corrupt: {error}") from error
        try:
            concepts = tuple(Concept(**_concept_fields(c)) for c in record["concepts"])
        except (TypeError, ValueError) as error:
            raise WeightsError(f"{record_file}: a concept entry is malformed: {error}") from error
        return cls(
            edits=edits,
            concepts=concepts,
            method=record["method"],
            config=record["config"],
            seed=record["seed"],
            base_fingerprint=record["base_fingerprint"],
            family=record["family"],
            stages=tuple(
                StageRecord(s["name"], float(s["seconds"]), s.get("stats", {}))
                for s in record["stages"]
            ),
            stats=record["stats"],
            library_version=record["library_version"],
            method_tensors=method_tensors,
            method_data=record["method_data"],
        )


class AppliedErasure:
    """An erasure loaded as a LoRA adapter into a pipeline; :meth:`remove` takes it out (and
    gives the parameters back the ``requires_grad`` flags PEFT's injection turned off)."""

    def __init__(
        self, pipe, adapter_name: str, flags: dict[str, dict[str, bool]] | None = None
    ) -> None:
        self.pipe, self.adapter_name = pipe, adapter_name
        self.flags = flags or {}
        self.removed = False

    def remove(self) -> None:
        """Delete the adapter (unloading LoRA layers when it was the last one)."""
        if self.removed:
            return
        remaining = [a for a in _all_adapters(self.pipe) if a != self.adapter_name]
        if self.adapter_name in _all_adapters(self.pipe):
            if remaining:
                self.pipe.delete_adapters(self.adapter_name)
            else:
                self.pipe.unload_lora_weights()
        for component, flags in self.flags.items():
            for name, param in getattr(self.pipe, component).named_parameters():
                if name in flags:
                    param.requires_grad_(flags[name])
        self.removed = True

    def __enter__(self) -> AppliedErasure:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class FusedErasure:
    """An erasure merged into a pipeline's weights; :meth:`remove` restores them bit for bit."""

    def __init__(self, pipe, backups: dict[str, torch.Tensor]) -> None:
        self.pipe, self.backups = pipe, backups

    def remove(self) -> None:
        with torch.no_grad():
            for key, weight in self.backups.items():
                base_linear(_module(self.pipe, key)).weight.copy_(weight)
        self.backups = {}

    def __enter__(self) -> FusedErasure:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


_RECORD_TYPES: dict[str, Any] = {
    "method": str,
    "concepts": list,
    "config": dict,
    "seed": int,
    "base_fingerprint": (dict, str),
    "family": str,
}


def _checked_record(record: Any, path: Path) -> dict:
    """``erasure.json`` checked in shape (a WeightsError names the first bad field), with the
    optional fields filled in; version-1 records (a single fingerprint string over the UNet's
    cross-attention) are read as ``{"unet": …}``."""
    if not isinstance(record, dict):
        raise WeightsError(f"{path} must hold a JSON object")
    if record.get("library") != "ace-erasure" or "base_fingerprint" not in record:
        raise WeightsError(f"{path} was not written by ace-erasure")
    for name, kind in _RECORD_TYPES.items():
        if name not in record:
            raise WeightsError(f"{path} lacks the field {name!r}")
        if not isinstance(record[name], kind) or isinstance(record[name], bool):
            raise WeightsError(f"{path}: field {name!r} has the wrong type")
    if isinstance(record["base_fingerprint"], str):
        record["base_fingerprint"] = {"unet": record["base_fingerprint"]}
    if not all(isinstance(v, str) for v in record["base_fingerprint"].values()):
        raise WeightsError(f"{path}: field 'base_fingerprint' has the wrong type")
    defaults: dict[str, Any] = {
        "stages": [],
        "stats": {},
        "method_data": {},
        "method_tensors": None,
        "library_version": "?",
    }
    for name, default in defaults.items():
        record.setdefault(name, default)
    if not isinstance(record["stages"], list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and "seconds" in s
        for s in record["stages"]
    ):
        raise WeightsError(f"{path}: field 'stages' has the wrong shape")
    if not isinstance(record["stats"], dict) or not isinstance(record["method_data"], dict):
        raise WeightsError(f"{path}: fields 'stats' and 'method_data' must be objects")
    return record


def _concept_fields(entry: Any) -> dict:
    if not isinstance(entry, dict):
        raise TypeError("expected an object")
    fields = dict(entry)
    for key in ("synonyms", "preserve"):
        fields[key] = tuple(fields.get(key) or ())
    return fields


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            # PEFT warns when a second adapter joins a model: composing erasures is the point
            warnings.filterwarnings("ignore", message=".*Already found a `peft_config`.*")
            yield
    finally:
        diffusers_logging.set_verbosity(level)


def _trainable_flags(pipe, components: Sequence[str]) -> dict[str, dict[str, bool]]:
    """Each component's parameters' ``requires_grad`` (PEFT's injection freezes them)."""
    return {
        c: {n: p.requires_grad for n, p in getattr(pipe, c).named_parameters()} for c in components
    }


def _all_adapters(pipe) -> list[str]:
    if not hasattr(pipe, "get_list_adapters"):
        return []
    return sorted({a for names in pipe.get_list_adapters().values() for a in names})


def _adapter_weights(pipe, active: list[str]) -> list[float]:
    """Current scales of the active adapters (1.0 where unknown), so adding one keeps them."""
    weights = []
    for name in active:
        scale = 1.0
        for module in pipe.unet.modules():
            scaling = getattr(module, "scaling", None)
            if isinstance(scaling, dict) and name in scaling:
                rank = module.r.get(name) if isinstance(getattr(module, "r", None), dict) else None
                alpha = (
                    module.lora_alpha.get(name)
                    if isinstance(getattr(module, "lora_alpha", None), dict)
                    else None
                )
                scale = scaling[name] / (alpha / rank) if rank and alpha else scaling[name]
                break
        weights.append(float(scale))
    return weights


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "ace_erasure": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        # CPU results are the same bytes for the same seed and the same thread count only
        "torch_threads": str(torch.get_num_threads()),
    }


def model_card(erasure: Erasure, has_grid: bool, grid_prompts: Sequence[str] = ()) -> str:
    """A short model card: what was erased, how to load it, and the provenance."""
    concepts = ", ".join(f"{c.name} ({c.kind})" for c in erasure.concepts)
    modules = sorted({re.sub(r"\.\d+\.", ".*.", k.split(".")[-1]) for k in erasure.edits})
    lines = [
        "---",
        "library_name: diffusers",
        "tags: [lora, concept-erasure, ace-erasure, text-to-image]",
        "---",
        "",
        f"# Erasure: {concepts}",
        "",
        f"A LoRA on the {', '.join(erasure.components)} ({', '.join(modules)} projections), made "
        f"with `ace-erasure` {erasure.library_version} (method `{erasure.method}`, seed "
        f"{erasure.seed}, rank {erasure.rank}), that stops the base model from drawing the "
        "concept(s) above while keeping everything else.",
        "",
        "## Use",
        "",
        "```python",
        'pipe.load_lora_weights("<this folder>", adapter_name="erasure")  # stock diffusers',
        'pipe.set_adapters(["erasure"], adapter_weights=[1.0])            # strength',
        "```",
        "",
        f"Family `{erasure.family}`; base-model fingerprint "
        + ", ".join(f"{part} `{value}`" for part, value in sorted(erasure.base_fingerprint.items()))
        + ". `ace-erasure` refuses to apply it to a model that differs in any of these parts.",
        "",
        "| concept | kind | synonyms given | anchor |",
        "|---|---|---|---|",
        *[
            f"| {c.name} | {c.kind} | {', '.join(c.synonyms) or '-'} | {c.anchor or '(empty)'} |"
            for c in erasure.concepts
        ],
        "",
    ]
    if has_grid:
        lines += [
            "## Before / after",
            "",
            "Top row: base model; bottom row: with this erasure (same seeds)."
            + (
                " Prompts, left to right: " + "; ".join(f"“{p}”" for p in grid_prompts) + "."
                if grid_prompts
                else ""
            ),
            "",
            "![before and after](grid.png)",
            "",
        ]
    lines += ["All hyper-parameters, seeds and versions are in `erasure.json`.", ""]
    return "\n".join(lines)
