"""Evaluation suites: which prompts probe an erased concept, and what the judge should see.

A :class:`Probe` is one prompt with the judge head to read and the label expected. A
:class:`Suite` groups the probes of one erased concept by what they measure:

- ``named``: prompts naming the concept (efficacy, Acc_e: lower is better after erasure);
- ``synonyms``: synonyms / indirect phrasings the method was not given (generality, Acc_g);
- ``others``: the other concepts that must stay (specificity, Acc_s);
- ``attributes``: other heads read on the same images (ToyWorld: colours), which must stay too.

Worlds build suites (``PromptWorld.suite``); the harness generates and judges them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Probe:
    """One prompt, the judge head to read, the label expected, and the groups it counts in.

    ``sample`` tells repeated prompts apart: each (prompt, sample) is its own image with its
    own seed (see :func:`number_samples`).
    """

    prompt: str
    head: str
    expected: str
    concept: str
    group: str
    sample: int = 0


@dataclass(frozen=True)
class Suite:
    """The probes of one erased concept, by role (see the module docstring)."""

    concept: str
    named: list[Probe]
    synonyms: list[Probe]
    others: list[Probe]
    attributes: list[Probe] = field(default_factory=list)
    attribute_name: str = "attribute"

    def probes(self) -> list[Probe]:
        """Every probe, numbered (:func:`number_samples`): named, synonyms, others, attributes."""
        return number_samples([*self.named, *self.synonyms, *self.others, *self.attributes])

    def roles(self) -> dict[str, list[Probe]]:
        return {
            "named": self.named,
            "synonyms": self.synonyms,
            "others": self.others,
            "attributes": self.attributes,
        }


def number_samples(probes: Sequence[Probe]) -> list[Probe]:
    """Number the repeats of each (prompt, head): the k-th repeat reads image (prompt, k), so a
    shape probe and a colour probe of the same prompt read the same image, and n repeats of a
    prompt are n images."""
    seen: dict[tuple[str, str], int] = defaultdict(int)
    out = []
    for probe in probes:
        k = seen[(probe.prompt, probe.head)]
        seen[(probe.prompt, probe.head)] += 1
        out.append(replace(probe, sample=k))
    return out


def samples(probes: Sequence[Probe]) -> list[tuple[str, int]]:
    """The distinct (prompt, sample) images that ``probes`` need, in first-use order."""
    return list(dict.fromkeys((p.prompt, p.sample) for p in probes))
