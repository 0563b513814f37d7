"""ACE stage 0: the concept's neighbourhood as (target, anchor) token-embedding pairs.

For every template x name of a concept, the target rows are the embeddings of the concept's
tokens **and every token after them** (EOS and padding carry the concept in CLIP encoders),
aligned token by token with the same prompt with the anchor in the concept's place. *Mined
neighbours* re-encode a few templates with the concept's input token embeddings randomly
perturbed (RealEra's idea) and map them onto the same anchors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from ace_erasure.concepts import Concept, PromptPair, prompt_pairs
from ace_erasure.linalg import RidgeEditFitter
from ace_erasure.methods.ace.config import AceConfig
from ace_erasure.models.conditioning import PromptEncoder
from ace_erasure.models.plumbing import aligned_positions, token_span

# anchor_push=None: how far explicit content (or any concept mapped onto the unconditional
# prompt) is pushed past its anchor (ToyWorld's hazard: 0.5, 0.75 and 1 all erased it fully)
AUTO_PUSH = 0.5


def token_weights(n_positions: int, n_concept: int, suffix_weight: float) -> torch.Tensor:
    """Weight 1 per concept token; the suffix tokens share ``suffix_weight * n_concept``."""
    weights = torch.ones(n_positions)
    n_suffix = n_positions - n_concept
    if n_suffix > 0:
        weights[n_concept:] = suffix_weight * n_concept / n_suffix
    return weights


def unconditional_anchor(concept: Concept, config: AceConfig) -> bool:
    """Whether ``concept`` is mapped onto the empty prompt's tokens (see ``empty_anchor``)."""
    return not concept.anchor and config.empty_anchor == "unconditional"


def anchor_push(concept: Concept, config: AceConfig) -> float:
    """The push ``concept`` gets past its anchor (``anchor_push``, resolved when automatic)."""
    if config.anchor_push is not None:
        return config.anchor_push
    pushed = concept.kind == "explicit" or unconditional_anchor(concept, config)
    return AUTO_PUSH if pushed else 0.0


def concept_prompt_pairs(
    concept: Concept,
    config: AceConfig,
    names: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
) -> list[PromptPair]:
    """The concept's (prompt, anchor prompt) pairs (``templates``: the kind's by default),
    with ``empty_anchor`` applied."""
    pairs = prompt_pairs(concept, names=names, templates=templates)
    if unconditional_anchor(concept, config):
        return [
            dataclasses.replace(p, anchor_text="", anchor_before="", anchor_through="")
            for p in pairs
        ]
    return pairs


def add_targets(
    fitter: RidgeEditFitter,
    targets: torch.Tensor,
    anchors: torch.Tensor,
    weights: torch.Tensor,
    push: float,
) -> None:
    """Add (target, anchor) rows; with ``push`` > 0 the anchors move away from the targets:
    ``a + push (a − t)``."""
    if push:
        anchors = anchors + push * (anchors - targets)
    fitter.update_targets(targets, anchors, weights)


def collect_targets(
    tokenizer,
    encode: PromptEncoder,
    concept: Concept,
    config: AceConfig,
    fitter: RidgeEditFitter,
    generator: torch.Generator,
    templates: Sequence[str] | None = None,
) -> int:
    """Stage 0 for one concept: add its (target, anchor) token pairs over ``templates`` (the
    kind's by default) to ``fitter`` as one group; returns the number of target rows."""
    templates = tuple(templates or concept.templates)
    pairs = concept_prompt_pairs(concept, config, templates=templates)
    texts = [p.text for p in pairs]
    anchor_texts = list(dict.fromkeys(p.anchor_text for p in pairs))
    anchor_embeds = dict(zip(anchor_texts, encode(anchor_texts)))
    # per prompt: concept-prompt positions, their aligned anchor rows, and the token weights
    sources, anchors, weights, concept_positions = [], [], [], []
    for pair in pairs:
        span = token_span(tokenizer, pair.before, pair.through)
        positions = aligned_positions(
            span, token_span(tokenizer, pair.anchor_before, pair.anchor_through)
        )
        if config.suffix_weight == 0:
            positions = positions[: span.stop - span.start]
        sources.append(torch.tensor([p for p, _ in positions]))
        anchors.append(anchor_embeds[pair.anchor_text][torch.tensor([q for _, q in positions])])
        weights.append(token_weights(len(positions), span.stop - span.start, config.suffix_weight))
        concept_positions.append(list(range(span.start, span.stop)))
    push = anchor_push(concept, config)

    def add(embeds: torch.Tensor, rows: list[int]) -> int:
        targets = torch.cat([embeds[k, sources[i]] for k, i in enumerate(rows)])
        add_targets(
            fitter,
            targets,
            torch.cat([anchors[i] for i in rows]),
            torch.cat([weights[i] for i in rows]),
            push,
        )
        return len(targets)

    fitter.begin_group(1.0)
    count = add(encode(texts), list(range(len(pairs))))
    # mined neighbours: perturb the concept's input token embeddings, keep the same anchors
    n_templates = len(templates)
    mined = [i for i in range(len(pairs)) if i % n_templates < config.neighbour_templates]
    for _ in range(config.neighbours if mined else 0):
        noisy = encode.perturbed(
            [texts[i] for i in mined],
            [concept_positions[i] for i in mined],
            config.neighbour_radius,
            generator,
        )
        count += add(noisy, mined)
    return count
