"""ToyWorld: a small, trained Stable-Diffusion-architecture model whose concepts we can measure."""

from ace_erasure.toyworld.render import Scene, render, render_batch
from ace_erasure.toyworld.vocab import Vocabulary, vocabulary

__all__ = ["Scene", "Vocabulary", "render", "render_batch", "vocabulary"]
