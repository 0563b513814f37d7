"""What the closed-form baselines (UCE, RECE, SPEED) share: the key embeddings of a concept
(the output of the text encoder at its **last** token), the guide's, and turning an edit
``Δ = W G`` of every cross-attention projection into exact low-rank module edits."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ace_erasure.concepts import Concept
from ace_erasure.erasure import ModuleEdit
from ace_erasure.errors import ConceptError
from ace_erasure.linalg import top_singular
from ace_erasure.models.conditioning import PromptEncoder
from ace_erasure.models.plumbing import base_linear, cross_attention_layers, token_span, tokenizers


def last_token_embeddings(pipe, encode: PromptEncoder, phrases: Sequence[str]) -> torch.Tensor:
    """(n, d) the cross-attention input at the last token of each phrase, encoded alone
    ("Van Gogh" -> the output at "gogh"); an empty phrase gives the start token's output."""
    tokenizer = tokenizers(pipe)[0]
    embeds = encode(list(phrases))
    rows = []
    for phrase, embed in zip(phrases, embeds):
        span = token_span(tokenizer, "", phrase)
        if phrase.strip() and span.stop <= span.start:
            raise ConceptError(f"{phrase!r} has no tokens in this tokenizer")
        rows.append(embed[max(span.stop - 1, 0)])
    return torch.stack(rows).double()


def concept_keys(
    pipe, encode: PromptEncoder, concepts: Sequence[Concept], templates: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, guides), each (n, d): every name of every concept (in the kind's templates too
    when ``templates``) at its last token, and its anchor's ("" = the start token) there."""
    phrases, guides = [], []
    for concept in concepts:
        for name in concept.names:
            forms = [t.format(name) for t in concept.templates] if templates else [name]
            anchor = concept.anchor or ""
            for form in forms:
                phrases.append(form)
                guides.append(form.replace(name, anchor).strip() if anchor else "")
    return last_token_embeddings(pipe, encode, phrases), last_token_embeddings(pipe, encode, guides)


def edits_from(
    pipe, edit: torch.Tensor, rank: int, *, values_only: bool = False
) -> dict[str, ModuleEdit]:
    """``Δ_l = W_l G`` of every cross-attention key and value projection (values only for
    ``values_only``) as exact rank-``rank`` module edits (``rank`` ≥ the rank of ``G``)."""
    edits = {}
    for name, module in cross_attention_layers(pipe.unet):
        for proj in ("to_v",) if values_only else ("to_k", "to_v"):
            weight = base_linear(getattr(module, proj)).weight.detach().to("cpu", torch.float64)
            delta = weight @ edit
            top = top_singular(delta, min(rank, min(delta.shape)), oversample=min(delta.shape))
            up, down = top.factors(rank)
            edits[f"unet.{name}.{proj}"] = ModuleEdit(down, up)
    return edits


def numeric_rank(matrix: torch.Tensor, tolerance: float = 1e-9) -> int:
    """How many singular values exceed ``tolerance`` x the largest (at least 1)."""
    values = torch.linalg.svdvals(matrix.double())
    if len(values) == 0 or float(values[0]) == 0:
        return 1
    return max(1, int((values > tolerance * values[0]).sum()))
