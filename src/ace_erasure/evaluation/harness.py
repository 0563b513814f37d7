"""Generate and judge probe prompts with fixed, prompt-derived seeds.

Every prompt gets a seed that depends only on its text, its repeat index and the run's seed
(:func:`prompt_seed`), so the unedited and the erased model draw the same prompt from the same
noise, and a prompt keeps its seed when the suite around it changes. Seeds start at
``HELD_OUT_SEED``, a range that ToyWorld's training never used.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ace_erasure.evaluation.judges import AMBIGUOUS, Judge
from ace_erasure.evaluation.sharding import SINGLE, Shards
from ace_erasure.evaluation.suites import Probe, number_samples, samples
from ace_erasure.models.loading import generate

HELD_OUT_SEED = 100_000  # generation seeds of evaluations start here
REPEAT_STRIDE = 7919  # seed offset between repeats of one prompt (a prime)


def prompt_seed(prompt: str, base: int) -> int:
    """A seed that depends only on the prompt text (and ``base``)."""
    return base + zlib.crc32(prompt.encode()) % 1_000_000


def image_seeds(keys: Sequence[tuple[str, int]], seed: int) -> list[int]:
    """The generation seed of each (prompt, repeat) image."""
    return [prompt_seed(prompt, HELD_OUT_SEED + seed) + REPEAT_STRIDE * k for prompt, k in keys]


@dataclass
class Judged:
    """Judge output for each generated image, keyed by (prompt, sample)."""

    keys: list[tuple[str, int]]
    labels: dict[str, list[str]]
    probabilities: dict[str, list[dict[str, float]]]

    def index(self) -> dict[tuple[str, int], int]:
        return {key: i for i, key in enumerate(self.keys)}


def judge_images(judge: Judge, keys: Sequence[tuple[str, int]], images: Sequence) -> Judged:
    labels = judge.predict(images)
    probs = judge.predict_proba(images)
    probabilities = {
        head: [dict(zip(judge.classes[head], row.tolist())) for row in p]
        for head, p in probs.items()
    }
    return Judged(list(keys), labels, probabilities)


def probe_outcomes(probes: Sequence[Probe], judged: Judged) -> list[dict]:
    """Per probe: the judge's label, whether it matched, and p(expected)."""
    where = judged.index()
    outcomes = []
    for probe in probes:
        i = where[(probe.prompt, probe.sample)]
        label = judged.labels[probe.head][i]
        outcomes.append(
            {
                **asdict(probe),
                "label": label,
                "correct": label == probe.expected,
                "ambiguous": label == AMBIGUOUS,
                "p_expected": judged.probabilities[probe.head][i].get(probe.expected, 0.0),
            }
        )
    return outcomes


def rate(judged: Judged, keys: Sequence[tuple[str, int]], head: str, label: str) -> float:
    """Fraction of the images ``keys`` whose ``head`` label is ``label``."""
    where = judged.index()
    hits = [judged.labels[head][where[k]] == label for k in keys]
    return sum(hits) / len(hits) if hits else 0.0


class Evaluator:
    """Generates probe images with prompt-derived seeds on ``pipe`` (as it is now: apply or fuse
    an erasure first) and judges them."""

    def __init__(
        self,
        pipe,
        judge: Judge,
        *,
        seed: int,
        steps: int,
        guidance: float,
        batch_size: int = 32,
        shards: Shards | None = None,
    ) -> None:
        self.pipe, self.judge = pipe, judge
        self.seed, self.steps, self.guidance, self.batch_size = seed, steps, guidance, batch_size
        self.shards = shards or SINGLE

    def outcomes(self, probes: Sequence[Probe]) -> list[dict]:
        """One outcome per probe (repeats of a prompt are distinct images with distinct seeds)."""
        return self.run(probes)[0]

    def run(self, probes: Sequence[Probe]) -> tuple[list[dict], list]:
        """The outcome of every probe, and the images (one per distinct (prompt, sample), in
        first-use order)."""
        probes = number_samples(probes)
        keys = samples(probes)
        jobs = list(zip([prompt for prompt, _ in keys], image_seeds(keys, self.seed)))

        def draw(block: list[tuple[str, int]]) -> list:
            return generate(
                self.pipe,
                [prompt for prompt, _ in block],
                seeds=[seed for _, seed in block],
                steps=self.steps,
                guidance=self.guidance,
                batch_size=self.batch_size,
            )

        images = self.shards.map_blocks(jobs, self.batch_size, draw)
        return probe_outcomes(probes, judge_images(self.judge, keys, images)), images
