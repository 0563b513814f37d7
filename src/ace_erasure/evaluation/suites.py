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
from pathlib import Path


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


def _cycled(prompts: Sequence[str], n: int) -> list[str]:
    return [prompts[i % len(prompts)] for i in range(n)] if prompts else []


def load_suite_file(path: str | Path) -> dict[str, dict]:
    """Read a suite file (YAML): for each concept, its named prompts, synonym prompts and other
    concepts' prompts, and the judge head and label that mean "the concept is there"::

        head: concept                 # the judge head to read (default: concept)
        concepts:
          Van Gogh:
            expected: Van Gogh        # the judge's label for it (default: the name)
            named: [a painting by Van Gogh, a Van Gogh landscape]
            synonyms: [a painting by Vincent]
            others:
              Monet: [a painting by Monet]

    Returns ``{concept: {"head", "expected", "named", "synonyms", "others"}}``; a malformed file
    is a ConfigError naming the entry.
    """
    import yaml

    from ace_erasure.errors import ConfigError

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"suite file {file} does not exist")
    try:
        data = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"suite file {file} is not valid YAML: {first}") from error
    if not isinstance(data, dict) or not isinstance(data.get("concepts"), dict):
        raise ConfigError(f"suite file {file} must hold a 'concepts:' mapping")
    head = str(data.get("head", "concept"))
    out: dict[str, dict] = {}

    def prompts(value: object, where: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(p, str) and p.strip() for p in value):
            raise ConfigError(f"suite file {file}: {where} must be a list of prompts")
        return [" ".join(p.split()) for p in value]

    for name, entry in data["concepts"].items():
        if not isinstance(entry, dict):
            raise ConfigError(f"suite file {file}: concept {name!r} must be a mapping")
        unknown = sorted(set(entry) - {"expected", "named", "synonyms", "others", "head"})
        if unknown:
            raise ConfigError(f"suite file {file}, {name!r}: unknown field(s) {', '.join(unknown)}")
        others = entry.get("others", {})
        if not isinstance(others, dict):
            raise ConfigError(f"suite file {file}, {name!r}: 'others' must map names to prompts")
        out[str(name)] = {
            "head": str(entry.get("head", head)),
            "expected": str(entry.get("expected", name)),
            "named": prompts(entry.get("named"), f"{name!r} named"),
            "synonyms": prompts(entry.get("synonyms", []), f"{name!r} synonyms")
            if entry.get("synonyms")
            else [],
            "others": {str(o): prompts(p, f"{name!r} others {o!r}") for o, p in others.items()},
        }
    return out


def suite_from_entry(name: str, entry: dict, n: int, n_other: int) -> Suite:
    """A :class:`Suite` from one entry of :func:`load_suite_file` (prompt lists cycled to
    ``n`` named / synonym images and ``n_other`` per other concept)."""
    head, expected = entry["head"], entry["expected"]
    return Suite(
        concept=name,
        named=[Probe(p, head, expected, name, "named") for p in _cycled(entry["named"], n)],
        synonyms=[
            Probe(p, head, expected, name, "synonyms") for p in _cycled(entry["synonyms"], n)
        ],
        others=[
            Probe(p, head, other, other, "others")
            for other, prompts in entry["others"].items()
            for p in _cycled(prompts, n_other)
        ],
    )
