"""The generate-and-judge harness: prompt-derived seeds and outcomes, on a tiny pipeline."""

from typing import ClassVar

import numpy as np
import torch

from ace_erasure.evaluation.harness import Evaluator, image_seeds, prompt_seed
from ace_erasure.evaluation.suites import Probe


class BrightnessJudge:
    """A stand-in judge: "bright" when the image's mean is above 127."""

    classes: ClassVar[dict[str, list[str]]] = {"light": ["bright", "dark"]}
    threshold = 0.5

    def predict_proba(self, images):
        means = torch.tensor([float(np.asarray(i.convert("L")).mean()) for i in images])
        bright = (means > 127).float()
        return {"light": torch.stack([bright, 1 - bright], 1)}

    def predict(self, images):
        probs = self.predict_proba(images)["light"]
        return {"light": ["bright" if p[0] > 0.5 else "dark" for p in probs]}

    def features(self, images):
        return torch.zeros(len(images), 1)


def test_seeds_depend_on_the_prompt_only():
    assert prompt_seed("a red circle", 5) == prompt_seed("a red circle", 5)
    assert prompt_seed("a red circle", 5) != prompt_seed("a blue circle", 5)
    keys = [("a", 0), ("b", 0), ("a", 1)]
    seeds = image_seeds(keys, 0)
    assert seeds[0] != seeds[2] and image_seeds(keys[::-1], 0) == seeds[::-1]


def test_evaluator_judges_every_probe_with_stable_images(tiny_pipes):
    pipe = tiny_pipes("sd1")
    evaluator = Evaluator(pipe, BrightnessJudge(), seed=0, steps=2, guidance=1.0)
    probes = [
        Probe("a red circle", "light", "bright", "circle", "g"),
        Probe("a blue star", "light", "dark", "star", "g"),
        Probe("a red circle", "light", "bright", "circle", "g"),
    ]
    first = evaluator.outcomes(probes)
    assert [o["sample"] for o in first] == [0, 0, 1]
    assert all(o["label"] in ("bright", "dark") for o in first)
    # the same prompt keeps its image when the suite around it changes
    alone = evaluator.outcomes(probes[:1])
    assert (
        alone[0]["label"] == first[0]["label"] and alone[0]["p_expected"] == first[0]["p_expected"]
    )
