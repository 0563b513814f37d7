"""What erasure needs from a diffusers pipeline, for every supported family.

- :func:`cross_attention_layers`: every text-conditioned cross-attention module (``attn2``).
- :func:`model_family`: "sd" (SD 1.x / 2.x / ToyWorld: one CLIP text encoder) or "sdxl".
- :func:`fingerprint`: a hash of the base model's parts an erasure depends on.
- :func:`token_span` / :func:`aligned_positions`: where a concept sits in a tokenised
  prompt, and which anchor-prompt position each concept-prompt position is mapped to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ace_erasure.errors import ModelLoadError


def cross_attention_layers(unet: Any) -> list[tuple[str, Any]]:
    """(name, Attention) for every cross-attention module whose keys come from the text.

    Names are module paths inside the UNet
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn2").
    """
    from diffusers.models.attention_processor import Attention

    context_dim = getattr(unet.config, "cross_attention_dim", None)
    layers: list[tuple[str, Any]] = []
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and module.is_cross_attention:
            in_features = base_linear(module.to_k).in_features
            if context_dim is None or in_features == _context_width(context_dim, in_features):
                layers.append((name, module))
    if not layers:
        raise ModelLoadError("this UNet has no text cross-attention layers: nothing to erase")
    return layers


def _context_width(cross_attention_dim: int | Sequence[int], in_features: int) -> int:
    # SD-style configs store one int; some store one per block.
    if isinstance(cross_attention_dim, int):
        return cross_attention_dim
    return in_features if in_features in cross_attention_dim else -1


def base_linear(module: Any) -> nn.Linear:
    """The plain ``nn.Linear`` of a projection, also when PEFT wrapped it in a LoRA layer."""
    base = getattr(module, "base_layer", module)
    assert isinstance(base, nn.Linear), f"expected a Linear projection, got {type(base).__name__}"
    return base


def projection_names(layers: Sequence[tuple[str, nn.Module]]) -> list[str]:
    """``<layer>.to_k`` and ``<layer>.to_v`` for every cross-attention layer, in order."""
    return [f"{name}.{proj}" for name, _ in layers for proj in ("to_k", "to_v")]


def projection_weights(unet: Any) -> dict[str, torch.Tensor]:
    """The base weight (out, in) of every cross-attention key/value projection."""
    weights = {}
    for name, module in cross_attention_layers(unet):
        weights[f"{name}.to_k"] = base_linear(module.to_k).weight
        weights[f"{name}.to_v"] = base_linear(module.to_v).weight
    return weights


def model_family(pipe) -> str:
    """ "sdxl" for two-encoder SDXL pipelines, "sd" for single-CLIP SD 1.x / 2.x-style ones."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise ModelLoadError(
            f"{type(pipe).__name__} has no CLIP text encoder: not a supported pipeline"
        )
    return "sd"


def _unet_fingerprint(unet: Any, keys: Sequence[str]) -> str:
    """The UNet's cross-attention key/value weights and any other UNet module in ``keys``,
    rounded to float16 (version 1 of the format hashed exactly the cross-attention part)."""
    weights = projection_weights(unet)
    for key in keys:
        component, path = key.split(".", 1)
        if component == "unet" and path not in weights:
            weights[path] = base_linear(unet.get_submodule(path)).weight
    digest = hashlib.sha256()
    for name, weight in sorted(weights.items()):
        digest.update(name.encode())
        digest.update(str(tuple(weight.shape)).encode())
        digest.update(weight.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


_SAMPLE = 65_536  # at most this many values of each tensor enter a text encoder's fingerprint


def _module_fingerprint(module: nn.Module) -> str:
    """Every parameter's name and shape, and an evenly strided sample of at most ``_SAMPLE``
    of its values rounded to float16: cheap (~0.1 s for CLIP-L), and it tells apart any two
    trained models; it can miss a change confined to a few values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLE)
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        if flat.is_floating_point():
            flat = flat[::step].to("cpu", torch.float16)
        else:
            flat = flat[::step].to("cpu")
        digest.update(flat.contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """The tokenizer's vocabulary (token -> id) and context length."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256(repr((vocab, int(tokenizer.model_max_length))).encode())
    return digest.hexdigest()[:32]


def fingerprint(pipe, edited: Sequence[str] = ()) -> dict[str, str]:
    """A hash per part of the base model that an erasure depends on: ``unet`` (its
    cross-attention key/value weights and any other UNet module in ``edited``), every text
    encoder and every tokenizer's vocabulary.

    Erasures record it and refuse to load onto a model that differs in any part. Weights are
    rounded to float16, so a float32 and a float16 copy of one checkpoint are the same model.
    """
    parts = {"unet": _unet_fingerprint(pipe.unet, edited)}
    for attribute in ENCODER_ATTRIBUTES:
        encoder = getattr(pipe, attribute, None)
        if encoder is not None:
            parts[attribute] = _module_fingerprint(encoder)
    for attribute in ("tokenizer", "tokenizer_2"):
        tokenizer = getattr(pipe, attribute, None)
        if tokenizer is not None:
            parts[attribute] = _tokenizer_fingerprint(tokenizer)
    return parts


def fingerprint_difference(recorded: dict[str, str], found: dict[str, str]) -> list[str]:
    """The recorded parts whose hashes differ from (or are missing in) ``found``; parts the
    record does not have (erasures of format 1 recorded only the UNet) are not compared."""
    return sorted(part for part in recorded if recorded[part] != found.get(part))


def tokenizers(pipe) -> list:
    """The pipeline's tokenizers (one for SD, two for SDXL)."""
    return [
        t
        for t in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None))
        if t is not None
    ]


ENCODER_ATTRIBUTES = ("text_encoder", "text_encoder_2")


def text_encoders(pipe) -> list[Any]:
    """The pipeline's text encoders (one for SD, two for SDXL)."""
    encoders = (getattr(pipe, attribute, None) for attribute in ENCODER_ATTRIBUTES)
    return [e for e in encoders if e is not None]


def max_length(pipe) -> int:
    return int(tokenizers(pipe)[0].model_max_length)


@dataclass(frozen=True)
class TokenSpan:
    """Token positions [start, stop) of a phrase in a prompt padded to ``length`` (BOS at 0)."""

    start: int
    stop: int
    length: int


def _count_tokens(tokenizer, text: str) -> int:
    text = text.strip()
    return len(tokenizer(text, add_special_tokens=False).input_ids) if text else 0


def token_span(tokenizer, before: str, through: str) -> TokenSpan:
    """Token span of the words between ``before`` and ``through`` (both prompt prefixes).

    CLIP's BPE splits words independently, so counting the tokens of each prefix locates the
    span (BOS is position 0). Spans past the context length are clipped.
    """
    length = int(tokenizer.model_max_length)
    first = 1 + _count_tokens(tokenizer, before)
    last = 1 + _count_tokens(tokenizer, through)
    return TokenSpan(min(first, length - 1), min(last, length - 1), length)


def aligned_positions(concept: TokenSpan, anchor: TokenSpan) -> list[tuple[int, int]]:
    """(concept-prompt position, anchor-prompt position) pairs: the concept tokens and all after.

    Concept tokens map proportionally onto the anchor's tokens; an empty anchor maps them to the
    position where the concept was removed (the next word, or the end-of-text token). Tokens
    after the concept (words, EOS, padding) map one to one, as far as both sequences go.
    """
    pairs = []
    n_concept, n_anchor = concept.stop - concept.start, anchor.stop - anchor.start
    for i in range(n_concept):
        j = anchor.start + (i * n_anchor) // n_concept if n_anchor else anchor.start
        pairs.append((concept.start + i, min(j, anchor.length - 1)))
    offset = anchor.stop - concept.stop
    for position in range(concept.stop, concept.length):
        if 0 <= position + offset < anchor.length:
            pairs.append((position, position + offset))
    return pairs
