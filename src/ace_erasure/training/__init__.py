"""Shared training machinery: resumable, seeded optimisation loops (:mod:`.loop`), checkpoints
(:mod:`.checkpoint`), LoRA adapters on a pipeline whose disabled state is the frozen teacher
(:mod:`.lora`), and noising helpers (:mod:`.diffusion`)."""
