"""Loading diffusers pipelines and finding the parts that erasure edits."""

from ace_erasure.models.loading import generate, load_pipeline

__all__ = ["generate", "load_pipeline"]
