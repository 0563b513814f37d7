"""The result of an erasure: per-projection low-rank factors + gates + a record of how it was made.

On disk an erasure is a folder::

    pytorch_lora_weights.safetensors   a diffusers-format LoRA on attn2.to_k / attn2.to_v
    erasure.json                       concepts, method, config, seed, base fingerprint, versions
    README.md                          a model card (with grid.png: before/after, when made)

``pipe.load_lora_weights(folder)`` in stock diffusers loads the LoRA; :meth:`Erasure.apply`
does the same through the same public API (as a named adapter, so erasures compose and
``pipe.set_adapters`` scales them), and checks first that the pipeline is the base model the
erasure was made for. :meth:`Erasure.fuse` merges into the weights instead; :meth:`remove`
undoes either, restoring the original weights bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import ace_erasure
from ace_erasure.concepts import Concept
from ace_erasure.errors import AceError, WeightsError
from ace_erasure.io import normal_permissions
from ace_erasure.models.plumbing import (
    base_linear,
    cross_attention_layers,
    fingerprint,
)

LORA_FILE = "pytorch_lora_weights.safetensors"
TOKEN_GATE_FILE = "ace_token_gate.safetensors"
RECORD_FILE = "erasure.json"
FORMAT_VERSION = 1
_KEY = re.compile(r"^unet\.(?P<module>.+\.to_[kv])\.lora_(?P<part>[AB])\.weight$")


@dataclass
class Erasure:
    """Low-rank edits of cross-attention key/value projections, and their provenance.

    ``up[name]`` (out, rank) already includes the gate; ``down[name]`` is (rank, in); the
    projection becomes ``W + up @ down``. ``name`` is the projection's module path in the UNet.
    """

    up: dict[str, torch.Tensor]
    down: dict[str, torch.Tensor]
    gates: dict[str, list[float]]
    concepts: list[Concept]
    method: str
    config: dict
    seed: int
    base_fingerprint: str
    family: str
    rank: int
    stats: dict = field(default_factory=dict)
    library_version: str = ace_erasure.__version__
    token_gate: dict | None = (
        None  # {"basis": (d, k), "threshold": τ, "sharpness": κ} in token-gate mode
    )
    _backups: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)
    _processors: dict[int, dict] = field(default_factory=dict, repr=False)

    # ---------------------------------------------------------------- applying
    @property
    def adapter_name(self) -> str:
        """A stable adapter name: the method and the concepts ("ace_circle_square")."""
        slug = "_".join(
            re.sub(r"[^a-z0-9]+", "-", c.name.lower()).strip("-") for c in self.concepts
        )
        return f"{self.method}_{slug}"[:64]

    def delta(self, name: str) -> torch.Tensor:
        """The dense edit (out, in) of one projection, float32."""
        return self.up[name] @ self.down[name]

    def check_compatible(self, pipe) -> None:
        """Raise WeightsError unless ``pipe`` is the base model this erasure was made for."""
        layers = {
            f"{n}.{p}": getattr(m, p)
            for n, m in cross_attention_layers(pipe.unet)
            for p in ("to_k", "to_v")
        }
        missing = sorted(set(self.up) - set(layers))
        if missing:
            raise WeightsError(
                f"this erasure targets layers the model does not have (e.g. {missing[0]}): "
                "it was made for another model"
            )
        for name, module in layers.items():
            if name in self.up:
                weight = base_linear(module).weight
                expected = (self.up[name].shape[0], self.down[name].shape[1])
                if tuple(weight.shape) != expected:
                    raise WeightsError(
                        f"layer {name} is {tuple(weight.shape)} here but {expected} in the "
                        "erasure: made for another model"
                    )
        found = fingerprint(pipe)
        if found != self.base_fingerprint:
            raise WeightsError(
                f"this erasure was made for base model {self.base_fingerprint}, "
                f"not this one ({found}); "
                "remove other fused erasures first, or erase again on this model"
            )

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """diffusers/PEFT LoRA keys: ``unet.<module>.lora_A.weight`` = down, ``lora_B`` = up."""
        state = {}
        for name in sorted(self.up):
            state[f"unet.{name}.lora_A.weight"] = self.down[name].contiguous()
            state[f"unet.{name}.lora_B.weight"] = self.up[name].contiguous()
        return state

    @property
    def mode(self) -> str:
        return "token_gate" if self.token_gate is not None else "lora"

    def apply(
        self, pipe, scale: float = 1.0, adapter_name: str | None = None, token_gate: bool = True
    ) -> str:
        """Load as a LoRA adapter (diffusers' ``load_lora_weights``); returns the adapter name.

        Adapters already loaded stay active, so several erasures compose; ``scale`` is the
        erasure strength (``pipe.set_adapters`` changes it later). A token-gate erasure installs
        its attention processors instead (``token_gate=False`` loads its LoRA linearisation).
        """
        self.check_compatible(pipe)
        if self.token_gate is not None and token_gate:
            self._install_token_gate(pipe, scale)
            return "token_gate"
        name = adapter_name or self.adapter_name
        active = list(pipe.get_active_adapters()) if hasattr(pipe, "get_active_adapters") else []
        if name in active or name in _all_adapters(pipe):
            raise AceError(
                f"an adapter named {name!r} is already loaded; remove it first or pick another name"
            )
        weights = _adapter_weights(pipe, active)
        state = {k: v.to(pipe.unet.dtype) for k, v in self.lora_state_dict().items()}
        with _quiet_diffusers():  # it warns that the text encoders get no LoRA keys (by design)
            pipe.load_lora_weights(state, adapter_name=name)
        pipe.set_adapters([*active, name], adapter_weights=[*weights, scale])
        return name

    def _install_token_gate(self, pipe, scale: float) -> None:
        from ace_erasure.processors import TokenGateProcessor

        if id(pipe) in self._processors:
            raise AceError("this token-gate erasure is already applied to this pipeline")
        assert self.token_gate is not None
        previous = dict(pipe.unet.attn_processors)
        processors = dict(previous)
        for layer, _ in cross_attention_layers(pipe.unet):
            k, v = f"{layer}.to_k", f"{layer}.to_v"
            processors[f"{layer}.processor"] = TokenGateProcessor(
                self.up[k] * scale,
                self.down[k],
                self.up[v] * scale,
                self.down[v],
                self.token_gate["basis"],
                self.token_gate["threshold"],
                self.token_gate["sharpness"],
            ).to(pipe.unet.device)
        pipe.unet.set_attn_processor(processors)
        self._processors[id(pipe)] = previous

    def fuse(self, pipe, scale: float = 1.0) -> None:
        """Merge the edit into the base weights (no adapter at inference); ``remove`` undoes it."""
        self.check_compatible(pipe)
        backups = {}
        with torch.no_grad():
            for layer, module in cross_attention_layers(pipe.unet):
                for proj in ("to_k", "to_v"):
                    name = f"{layer}.{proj}"
                    if name not in self.up:
                        continue
                    linear = base_linear(getattr(module, proj))
                    backups[name] = linear.weight.detach().clone()
                    edit = self.delta(name).to(torch.float64) * scale
                    linear.weight.copy_(
                        (linear.weight.to(torch.float64) + edit.to(linear.weight.device)).to(
                            linear.weight.dtype
                        )
                    )
        self._backups[id(pipe)] = backups

    def remove(self, pipe, adapter_name: str | None = None) -> None:
        """Undo :meth:`apply` or :meth:`fuse`; the original weights come back bit for bit."""
        previous = self._processors.pop(id(pipe), None)
        if previous is not None:
            pipe.unet.set_attn_processor(previous)
            return
        backups = self._backups.pop(id(pipe), None)
        if backups is not None:
            with torch.no_grad():
                for layer, module in cross_attention_layers(pipe.unet):
                    for proj in ("to_k", "to_v"):
                        name = f"{layer}.{proj}"
                        if name in backups:
                            base_linear(getattr(module, proj)).weight.copy_(backups[name])
            return
        name = adapter_name or self.adapter_name
        if name not in _all_adapters(pipe):
            raise AceError(f"erasure {name!r} is not applied to this pipeline")
        remaining = [a for a in _all_adapters(pipe) if a != name]
        if remaining:
            pipe.delete_adapters(name)
        else:
            pipe.unload_lora_weights()

    # ---------------------------------------------------------------- saving
    def record(self) -> dict:
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
            "mode": self.mode,
            "token_gate": None
            if self.token_gate is None
            else {
                "file": TOKEN_GATE_FILE,
                "threshold": self.token_gate["threshold"],
                "sharpness": self.token_gate["sharpness"],
            },
            "gates": self.gates,
            "stats": self.stats,
            "versions": _versions(),
        }

    def save(
        self, directory: str | Path, *, card: str | None = None, grid=None, overwrite: bool = False
    ) -> Path:
        """Write the erasure folder atomically (a temporary folder renamed into place)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        out = Path(directory)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise AceError(f"{out} already exists and is not empty (use --overwrite to replace it)")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            layers = {k[len("unet.") :]: v for k, v in self.lora_state_dict().items()}
            saver = StableDiffusionXLPipeline if self.family == "sdxl" else StableDiffusionPipeline
            # No adapter metadata: diffusers infers r from the shapes and alpha defaults to r
            # (scale 1, same in old and new diffusers). With a second metadata key, safetensors'
            # header order varies between calls, and the same seed must give the same bytes.
            saver.save_lora_weights(tmp, unet_lora_layers=layers)
            (tmp / RECORD_FILE).write_text(json.dumps(self.record(), indent=2) + "\n")
            if self.token_gate is not None:
                save_file(
                    {"basis": self.token_gate["basis"].contiguous()}, str(tmp / TOKEN_GATE_FILE)
                )
            if grid is not None:
                grid.save(tmp / "grid.png")
            (tmp / "README.md").write_text(card or model_card(self, has_grid=grid is not None))
            normal_permissions(tmp)
            if out.exists():
                shutil.rmtree(out)
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
        if record.get("library") != "ace-erasure" or "base_fingerprint" not in record:
            raise WeightsError(f"{record_file} was not written by ace-erasure")
        up: dict[str, torch.Tensor] = {}
        down: dict[str, torch.Tensor] = {}
        try:
            with safe_open(str(lora), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    match = _KEY.match(key)
                    if not match:
                        raise WeightsError(
                            f"{lora} holds an unexpected tensor {key!r}: not an ace-erasure LoRA"
                        )
                    target = up if match["part"] == "B" else down
                    target[match["module"]] = f.get_tensor(key).float()
        except WeightsError:
            raise
        except Exception as error:
            raise WeightsError(f"{lora} is corrupt or not a safetensors file: {error}") from error
        if set(up) != set(down) or not up:
            raise WeightsError(f"{lora} is incomplete: LoRA up/down factors do not match")
        for name in up:
            if up[name].shape[1] != down[name].shape[0]:
                raise WeightsError(f"{lora}: rank mismatch in {name}")
        concepts = [
            Concept(**{**c, "synonyms": tuple(c["synonyms"]), "preserve": tuple(c["preserve"])})
            for c in record["concepts"]
        ]
        token_gate = None
        if record.get("token_gate"):
            gate_file = folder / TOKEN_GATE_FILE
            try:
                basis = load_file(str(gate_file))["basis"]
            except Exception as error:
                raise WeightsError(f"{gate_file} is missing or corrupt: {error}") from error
            token_gate = {
                "basis": basis,
                "threshold": float(record["token_gate"]["threshold"]),
                "sharpness": float(record["token_gate"]["sharpness"]),
            }
        return cls(
            up=up,
            down=down,
            gates=record.get("gates", {}),
            concepts=concepts,
            method=record["method"],
            config=record.get("config", {}),
            seed=record.get("seed", 0),
            base_fingerprint=record["base_fingerprint"],
            family=record.get("family", "sd"),
            rank=int(record.get("rank", next(iter(down.values())).shape[0])),
            stats=record.get("stats", {}),
            library_version=record.get("library_version", "?"),
            token_gate=token_gate,
        )


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


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
        "ace_erasure": ace_erasure.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def model_card(erasure: Erasure, has_grid: bool) -> str:
    """A short model card: what was erased, how to load it, and the provenance."""
    concepts = ", ".join(f"{c.name} ({c.kind})" for c in erasure.concepts)
    lines = [
        "---",
        "library_name: diffusers",
        "tags: [lora, concept-erasure, ace-erasure, text-to-image]",
        "---",
        "",
        f"# Erasure: {concepts}",
        "",
        "A LoRA on the cross-attention key/value projections, made with `ace-erasure` "
        f"{erasure.library_version} (method `{erasure.method}`, seed {erasure.seed}, "
        f"rank {erasure.rank}), that stops the base model from "
        "drawing the concept(s) above while keeping everything else.",
        "",
        "## Use",
        "",
        "```python",
        'pipe.load_lora_weights("<this folder>", adapter_name="erasure")  # stock diffusers',
        'pipe.set_adapters(["erasure"], adapter_weights=[1.0])            # strength',
        "```",
        "",
        f"Base model fingerprint: `{erasure.base_fingerprint}` (family `{erasure.family}`); "
        "`ace-erasure` refuses to apply it to another model.",
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
            "Top row: base model; bottom row: with this erasure (same seeds).",
            "",
            "![before and after](grid.png)",
            "",
        ]
    lines += ["All hyper-parameters, seeds and versions are in `erasure.json`.", ""]
    return "\n".join(lines)
