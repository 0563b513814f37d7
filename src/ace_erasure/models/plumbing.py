"""What erasure needs from a diffusers pipeline, for every supported family.

- :func:`cross_attention_layers`: every text-conditioned cross-attention module (``attn2``).
- :func:`model_family`: "sd" (SD 1.x / 2.x / ToyWorld: one CLIP text encoder) or "sdxl".
- :func:`encode_prompts`: the token embeddings the UNet's cross-attention sees, through the
  pipeline's own ``encode_prompt`` (so clip-skip, SDXL's two encoders etc. are exactly as at
  sampling time), optionally with a perturbation of chosen input token embeddings.
- :class:`PromptEncoder`: :func:`encode_prompts` for one erasure — remembers prompts that recur
  (anchors, concept prompts reused by the gates) and can run the encoder(s) in bfloat16.
- :func:`token_span` / :func:`aligned_positions`: where a concept sits in a tokenised
  prompt, and which anchor-prompt position each concept-prompt position is mapped to.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Callable, Iterator, Sequence
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


def fingerprint(pipe) -> str:
    """A hash of the base model's cross-attention key/value weights (rounded to float16).

    Erasures record it and refuse to load onto another base model. Rounding to float16 makes a
    float32 and a float16 copy of the same checkpoint share one fingerprint.
    """
    digest = hashlib.sha256()
    for name, weight in sorted(projection_weights(pipe.unet).items()):
        digest.update(name.encode())
        digest.update(str(tuple(weight.shape)).encode())
        digest.update(weight.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def tokenizers(pipe) -> list:
    """The pipeline's tokenizers (one for SD, two for SDXL)."""
    return [
        t
        for t in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None))
        if t is not None
    ]


_ENCODER_ATTRIBUTES = ("text_encoder", "text_encoder_2")


def text_encoders(pipe) -> list[Any]:
    """The pipeline's text encoders (one for SD, two for SDXL)."""
    encoders = (getattr(pipe, attribute, None) for attribute in _ENCODER_ATTRIBUTES)
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


@contextlib.contextmanager
def perturbed_token_embeddings(
    pipe, positions: Sequence[Sequence[int]], radius: float, generator: torch.Generator
) -> Iterator[None]:
    """Within the block, add random noise to the *input* token embeddings at ``positions[i]`` of
    prompt ``i`` in every text encoder (norm = ``radius`` x the embedding's norm).

    This mines neighbours of a concept in the encoder's input space: the encoder's outputs for
    the perturbed prompts are nearby ways of saying the concept (RealEra's idea).
    """
    handles = []

    def hook_for(module: nn.Module) -> Callable:
        def hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
            if output.shape[0] != len(positions):
                return output
            output = output.clone()
            for row, cols in enumerate(positions):
                if not cols:
                    continue
                index = torch.as_tensor(list(cols))
                base = output[row, index]
                noise = torch.randn(base.shape, generator=generator, dtype=torch.float32).to(base)
                noise = (
                    noise
                    / noise.norm(dim=-1, keepdim=True)
                    * base.norm(dim=-1, keepdim=True)
                    * radius
                )
                output[row, index] = base + noise
            return output

        return hook

    for encoder in text_encoders(pipe):
        embedding = encoder.get_input_embeddings()
        handles.append(embedding.register_forward_hook(hook_for(embedding)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """(n_prompts, tokens, context_dim) embeddings that the UNet's cross-attention receives."""
    device = pipe.unet.device
    chunks = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        if model_family(pipe) == "sdxl":
            embeds = pipe.encode_prompt(
                prompt=batch,
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
            )[0]
        else:
            embeds = pipe.encode_prompt(batch, device, 1, False)[0]
        chunks.append(embeds.float())
    return torch.cat(chunks)


class PromptEncoder:
    """:func:`encode_prompts` for the duration of one erasure.

    - Prompts encoded without perturbation are remembered, so that prompts shared by concepts
      (the anchor "a photo of a" of 100 objects) or stages (the gates reuse concept prompts) run
      through the text encoder once.
    - ``dtype``: run copies of the text encoder(s) in this dtype (e.g. ``torch.bfloat16``: ~3.7x
      faster for a CLIP-L-sized encoder on an AVX-512-BF16 CPU, ~0.7 % relative deviation of
      the embeddings). The pipeline's own encoders are swapped back after every call, so
      sampling with the pipeline is never affected. None: the pipeline's encoders as they are.
    """

    def __init__(self, pipe, dtype: torch.dtype | None = None) -> None:
        self.pipe = pipe
        self.cache: dict[str, torch.Tensor] = {}
        self.passes = 0  # prompts that went through the text encoder(s)
        self._copies: dict[str, nn.Module] = {}
        for attribute in _ENCODER_ATTRIBUTES:
            encoder = getattr(pipe, attribute, None)
            if dtype is not None and encoder is not None and encoder.dtype != dtype:
                self._copies[attribute] = copy.deepcopy(encoder).to(dtype)

    @contextlib.contextmanager
    def _encoders(self) -> Iterator[None]:
        originals = {a: getattr(self.pipe, a) for a in self._copies}
        try:
            for attribute, encoder in self._copies.items():
                setattr(self.pipe, attribute, encoder)
            yield
        finally:
            for attribute, encoder in originals.items():
                setattr(self.pipe, attribute, encoder)

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """(n_prompts, tokens, context_dim) embeddings; each distinct prompt encoded once."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            with self._encoders():
                embeds = encode_prompts(self.pipe, missing)
            self.passes += len(missing)
            self.cache.update(zip(missing, embeds))
        return torch.stack([self.cache[p] for p in prompts])

    def perturbed(
        self,
        prompts: Sequence[str],
        positions: Sequence[Sequence[int]],
        radius: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Embeddings of ``prompts`` with their input token embeddings at ``positions``
        perturbed (see :func:`perturbed_token_embeddings`); never remembered."""
        with self._encoders(), perturbed_token_embeddings(self.pipe, positions, radius, generator):
            embeds = encode_prompts(self.pipe, prompts, batch_size=len(prompts))
        self.passes += len(prompts)
        return embeds
