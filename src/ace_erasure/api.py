"""The Python entry point: ``erase(pipe, concepts, method="ace") -> Erasure``."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

from ace_erasure.concepts import Concept, as_concepts
from ace_erasure.erasure import Erasure
from ace_erasure.errors import ConceptError, ConfigError
from ace_erasure.methods import CONFIGS
from ace_erasure.models.plumbing import fingerprint, model_family

logger = logging.getLogger(__name__)
TOYWORLD_KINDS = {
    "shapes": "object",
    "colours": "object",
    "styles": "style",
    "characters": "celebrity",
    "hazard": "explicit",
}


def is_toyworld(pipe) -> bool:
    """True when ``pipe`` was loaded from a ToyWorld folder (bundled or retrained)."""
    from ace_erasure.toyworld.assets import toyworld_folder_of

    path = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "")
    return bool(path) and toyworld_folder_of(path) is not None


def resolve_concepts(items: Iterable[Concept | str], *, toyworld: bool) -> list[Concept]:
    """Concepts from objects or names; on ToyWorld, names get their kind from the vocabulary and
    words outside ToyWorld's vocabulary are refused (the model cannot draw them anyway)."""
    from ace_erasure.toyworld.captions import unknown_words
    from ace_erasure.toyworld.vocab import vocabulary

    concepts = []
    for item in items:
        if isinstance(item, str) and toyworld:
            family = vocabulary().family_of(item)
            kind = TOYWORLD_KINDS.get(family or "", "object")
            name = vocabulary().canonical(item) or item
            concepts.append(Concept(name, kind=kind))  # type: ignore[arg-type]
        else:
            concepts.append(item if isinstance(item, Concept) else Concept(str(item)))
    concepts = as_concepts(concepts)
    if toyworld:
        vocab = vocabulary()
        for concept in concepts:
            for name in (*concept.names, *concept.preserve):
                unknown = unknown_words(name)
                if unknown:
                    known = ", ".join(
                        [
                            *vocab.shapes,
                            *vocab.style_names,
                            *vocab.character_names,
                            vocab.hazard_name,
                        ]
                    )
                    raise ConceptError(
                        f"{name!r} is not in ToyWorld's vocabulary "
                        f"(unknown: {', '.join(unknown)}); "
                        f"known concepts: {known}"
                    )
    return concepts


def erase(
    pipe,
    concepts: Iterable[Concept | str],
    method: str = "ace",
    config=None,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> Erasure:
    """Erase ``concepts`` from ``pipe`` (not modified) and return the :class:`Erasure`.

    ``concepts`` are :class:`Concept` objects or plain names (on ToyWorld a name's kind comes
    from the vocabulary; elsewhere it defaults to "object"). ``config`` is the method's config
    dataclass (``AceConfig`` for ACE) or a dict of its fields; None uses the defaults.
    """
    if method not in CONFIGS:
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(sorted(CONFIGS))}")
    config_cls = CONFIGS[method]
    if config is None:
        config = config_cls()
    elif isinstance(config, dict):
        unknown = set(config) - {f.name for f in dataclasses.fields(config_cls)}
        if unknown:
            raise ConfigError(f"unknown {method} option(s): {', '.join(sorted(unknown))}")
        config = config_cls(**config)
    toyworld = is_toyworld(pipe)
    resolved = resolve_concepts(concepts, toyworld=toyworld)
    family = model_family(pipe)
    if method == "ace":
        from ace_erasure.methods import ace

        result = ace.fit(pipe, resolved, config, seed, toyworld=toyworld, progress=progress)
    else:  # pragma: no cover - registry and dispatch grow together
        raise ConfigError(f"method {method!r} is registered but not implemented")
    return Erasure(
        up={k: e.up for k, e in result.edits.items()},
        down={k: e.down for k, e in result.edits.items()},
        gates={
            k.rsplit(".", 1)[0]: e.gate.tolist()
            for k, e in result.edits.items()
            if k.endswith("to_k")
        },
        concepts=resolved,
        method=method,
        config=dataclasses.asdict(config),
        seed=seed,
        base_fingerprint=fingerprint(pipe),
        family=family,
        rank=result.rank,
        stats=result.stats,
        token_gate=result.token_gate,
    )
