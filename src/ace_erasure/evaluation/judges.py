"""The judge protocol: what the evaluation harness needs from anything that labels images.

A judge has named *heads* (ToyWorld's: shape, colour, style, character, hazard; NudeNet's: the
exposed classes; a CLIP zero-shot judge: one head over the suite's class names). For each image
and head it gives class probabilities and a label, "ambiguous" when the top probability is below
its threshold, so that an erased image that shows no clear concept is not silently counted as
another one. ``features`` feeds the FID-like quality score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

AMBIGUOUS = "ambiguous"  # the label of an image whose top probability is below the threshold
NONE = "none"  # the class "no such concept in the image"


@runtime_checkable
class Judge(Protocol):
    """Labels images, one label per head (see the module docstring)."""

    classes: dict[str, list[str]]  # head -> class names
    threshold: float

    def predict_proba(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """head -> (n_images, n_classes) probabilities."""
        ...

    def predict(self, images: Sequence[Image.Image]) -> dict[str, list[str]]:
        """head -> one label per image (a class name or ``AMBIGUOUS``)."""
        ...

    def features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n_images, feature_dim) image features for distribution distances."""
        ...


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples): the
    FID formula, on whatever features the judge gives."""
    a64, b64 = a.double(), b.double()
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    cov_a, cov_b = torch.cov(a64.T), torch.cov(b64.T)
    # tr(sqrt(cov_a cov_b)) from the eigenvalues of sqrt(cov_a) cov_b sqrt(cov_a) (symmetric PSD)
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)
