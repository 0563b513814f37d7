"""A LoRA ``W + B A`` on chosen plain linears of a pipeline, through forward hooks, and the
linears it is put on: the text encoder's (AdvUnlearn, ACE stage 2's optional text-encoder LoRA)
and the UNet's outside cross-attention (ESD-u, ACE stage 2's optional UNet LoRA).

Hooks rather than :func:`ace_erasure.training.lora.attach`: that goes through transformers'
``add_adapter`` / ``disable_adapters``, which transformers 5.x refuses below PEFT 0.22. Hooks
leave the modules and their state dicts untouched, and the result is the same ``W + B A``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ace_erasure.erasure import ModuleEdit
from ace_erasure.errors import ModelLoadError
from ace_erasure.models.plumbing import ENCODER_ATTRIBUTES, base_linear, cross_attention_layers

# the linears of a CLIP encoder layer ("encoder.layers.3.self_attn.q_proj"; older transformers
# put them under "text_model.")
_ENCODER_LINEAR = re.compile(
    r"(?:^|\.)encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12])$"
)


def text_encoder_modules(pipe) -> list[str]:
    """``text_encoder[_2].…encoder.layers.<i>.self_attn.{q,k,v,out}_proj`` and ``mlp.fc1/fc2``
    of every encoder of ``pipe``."""
    keys = []
    for attribute in ENCODER_ATTRIBUTES:
        encoder = getattr(pipe, attribute, None)
        if encoder is None:
            continue
        keys += [
            f"{attribute}.{name}"
            for name, module in encoder.named_modules()
            if isinstance(module, nn.Linear) and _ENCODER_LINEAR.search(name)
        ]
    if not keys:
        raise ModelLoadError("this pipeline's text encoder has no CLIP encoder layers to train")
    return keys


def non_cross_attention_modules(pipe) -> list[str]:
    """Every linear of the UNet's transformers except the cross-attention ones (ESD-u):
    ``proj_in`` / ``proj_out`` where linear, self-attention and feed-forward layers."""
    cross = {name for name, _ in cross_attention_layers(pipe.unet)}
    keys = []
    for name, module in pipe.unet.named_modules():
        if getattr(module, "transformer_blocks", None) is None:
            continue
        for path, sub in module.named_modules(prefix=name):
            if not isinstance(sub, nn.Linear) or any(path.startswith(f"{c}.") for c in cross):
                continue
            local = path[len(name) + 1 :]
            if local in ("proj_in", "proj_out") or local.startswith("transformer_blocks."):
                keys.append(f"unet.{path}")
    if not keys:
        raise ModelLoadError("this UNet has no transformer linears outside cross-attention")
    return keys


def module_ranks(pipe, keys: Sequence[str], rank: int | None) -> dict[str, int]:
    """The rank each module's LoRA may use: ``min(out, in)``, capped at ``rank``."""
    ranks = {}
    for key in keys:
        component, path = key.split(".", 1)
        out_features, in_features = base_linear(
            getattr(pipe, component).get_submodule(path)
        ).weight.shape
        full = min(int(out_features), int(in_features))
        ranks[key] = full if rank is None else min(rank, full)
    return ranks


class LinearLora:
    """A trainable LoRA ``W + B A`` on chosen linears of a pipeline, through forward hooks.

    ``ranks[key]`` is each module's rank; all share the largest (A's rows beyond a module's
    rank are zero, with B zero they stay so). A starts uniform in ±1/√in (seeded), B at zero,
    as :func:`ace_erasure.training.lora.attach`. :meth:`disabled` gives the frozen base model
    (the teacher); :meth:`remove` takes the hooks out.
    """

    def __init__(self, pipe, ranks: dict[str, int], *, seed: int) -> None:
        width = max(ranks.values())
        generator = torch.Generator().manual_seed(seed)
        self.enabled = True
        self.down: dict[str, nn.Parameter] = {}
        self.up: dict[str, nn.Parameter] = {}
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        try:
            for key, rank in ranks.items():
                component, path = key.split(".", 1)
                module = getattr(pipe, component).get_submodule(path)
                if not isinstance(module, nn.Linear):
                    raise ModelLoadError(f"{key} is not a plain linear layer (a LoRA loaded?)")
                out_features, in_features = module.weight.shape
                bound = 1 / in_features**0.5
                down = (torch.rand(width, in_features, generator=generator) * 2 - 1) * bound
                down[rank:] = 0
                device = module.weight.device
                self.down[key] = nn.Parameter(down.to(device))
                self.up[key] = nn.Parameter(torch.zeros(out_features, width, device=device))
                self.handles.append(module.register_forward_hook(self._hook(key)))
        except BaseException:
            self.remove()
            raise

    def _hook(self, key: str):
        def hook(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if not self.enabled:
                return output
            x = inputs[0]
            update = F.linear(F.linear(x, self.down[key].to(x.dtype)), self.up[key].to(x.dtype))
            return output + update.to(output.dtype)

        return hook

    def factor_parameters(self) -> dict[str, nn.Parameter]:
        """``<key>.down`` (A) and ``<key>.up`` (B) of every module."""
        params = {}
        for key in self.down:
            params[f"{key}.down"] = self.down[key]
            params[f"{key}.up"] = self.up[key]
        return params

    def edits(self) -> dict[str, ModuleEdit]:
        """The current factors as module edits (detached float32 copies, gate 1)."""
        return {
            key: ModuleEdit(
                self.down[key].detach().float().cpu().clone(),
                self.up[key].detach().float().cpu().clone(),
            )
            for key in self.down
        }

    def reached_edits(self) -> dict[str, ModuleEdit]:
        """:meth:`edits` without those still at B = 0: a module the conditioning never reaches
        (SDXL reads the first encoder's penultimate layer, so its last layer gets no
        gradient) changes nothing."""
        return {k: e for k, e in self.edits().items() if bool(e.up.any())}

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Within the block the pipeline is the frozen base model (the teacher)."""
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def remove(self) -> None:
        """Take the hooks out; the pipeline computes as before."""
        for handle in self.handles:
            handle.remove()
        self.handles = []


@contextlib.contextmanager
def requires_grad(params: Sequence[nn.Parameter], flag: bool) -> Iterator[None]:
    """Within the block ``params`` do (not) require gradients; their flags are put back."""
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(flag)
    try:
        yield
    finally:
        for p, was in zip(params, before):
            p.requires_grad_(was)
