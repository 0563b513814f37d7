"""Train ToyWorld from scratch: judge, VAE, then text encoder + UNet, into a diffusers pipeline.

The output folder is a "ToyWorld folder"::

    OUT/model/          a StableDiffusionPipeline (``from_pretrained(OUT/model)`` loads it offline)
    OUT/judge/          the judge (safetensors + config)
    OUT/manifest.json   sha256 of every file, configs, steps, seeds, wall times, accuracies
    OUT/_work/          resumable state (checkpoints, cached latents); safe to delete when done

Every stage is resumable: a finished stage is skipped, and the UNet stage restarts from its last
checkpoint (written every ``checkpoint_every`` steps, atomically). The same seed and config give
the same model on the same software stack.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ace_erasure._version import __version__
from ace_erasure.io import normal_permissions
from ace_erasure.models.tokenizer import MAX_LENGTH, build_tokenizer, write_clip_vocabulary
from ace_erasure.toyworld.captions import CaptionConfig, caption
from ace_erasure.toyworld.judge import (
    Judge,
    JudgeTrainConfig,
    head_classes,
    images_to_tensor,
    sample_scene,
    scene_labels,
    train_judge,
)
from ace_erasure.toyworld.render import render
from ace_erasure.toyworld.vocab import Vocabulary, vocabulary
from ace_erasure.training.checkpoint import (
    atomic_save,
    atomic_write_text,
    optimizer_tensors,
    restore_optimizer,
)

logger = logging.getLogger(__name__)

# (stage, step, total, info) -> None; the CLI turns it into progress bars with an ETA.
Progress = Callable[[str, int, int, dict], None]

# (colour, shape) pairs never shown in training: compositional generalisation is measured on them.
HELD_OUT_PAIRS = (
    ("red", "star"),
    ("green", "heart"),
    ("blue", "triangle"),
    ("yellow", "circle"),
    ("purple", "square"),
    ("orange", "hexagon"),
    ("cyan", "cross"),
    ("black", "diamond"),
    ("red", "crescent"),
    ("blue", "arrow"),
)


@dataclass
class ToyWorldTrainConfig:
    """Everything that determines a trained ToyWorld (recorded in its manifest).

    Args:
        seed: seeds every stage (judge, VAE, data, UNet) through fixed offsets.
        image_size: image side in pixels.
        scene_mix: probabilities of object / character / hazard scenes in the diffusion data.
        p_blob: share of shapeless blobs captioned by their colour alone ("a red"), so that a
            prompt without a shape -- what an erased shape maps to -- draws no particular shape
            (without them ToyWorld drew a square for "a red", and "square" could not be erased).
        p_style: probability that an object is drawn in one of the artists' styles.
        held_out_pairs: (colour, shape) pairs kept out of the diffusion training data.
        n_images: rendered images encoded once into the latent dataset.
        vae_channels: AutoencoderKL block widths (three blocks: downsampling factor 4).
        vae_steps, vae_batch_size, vae_lr: VAE training (MSE + 0.5 L1 + 1e-6 KL).
        text_hidden, text_layers, text_heads: CLIPTextModel size (hidden = cross-attention dim).
        unet_channels, unet_layers_per_block, attention_head_dim: UNet2DConditionModel size;
            SD-v1 layout (cross-attention at every resolution but the lowest).
        steps, batch_size, lr, warmup_steps, weight_decay, ema_decay: UNet + text encoder
            training (joint, DDPM epsilon objective, AdamW, cosine decay to 10 %).
        p_uncond: probability of an empty caption (classifier-free guidance).
        checkpoint_every: steps between resumable checkpoints.
        judge: the judge's own training config.
    """

    seed: int = 0
    image_size: int = 32
    scene_mix: tuple[float, float, float] = (0.64, 0.26, 0.10)
    p_blob: float = 0.04
    p_style: float = 0.5
    held_out_pairs: tuple[tuple[str, str], ...] = HELD_OUT_PAIRS
    n_images: int = 60_000
    vae_channels: tuple[int, ...] = (32, 64, 64)
    vae_steps: int = 1500
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    text_hidden: int = 64
    text_layers: int = 3
    text_heads: int = 4
    unet_channels: tuple[int, ...] = (40, 80, 80)
    unet_layers_per_block: int = 2
    attention_head_dim: int = 8
    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 1e-2
    ema_decay: float = 0.999
    p_uncond: float = 0.1
    checkpoint_every: int = 250
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    judge: JudgeTrainConfig = field(default_factory=JudgeTrainConfig)

    def validate(self) -> None:
        from ace_erasure.errors import ConfigError

        if self.image_size % 4:
            raise ConfigError(
                "image_size must be a multiple of 4 (the VAE downsamples by 4), "
                f"got {self.image_size}"
            )
        if self.text_hidden % self.text_heads:
            raise ConfigError("text_hidden must be divisible by text_heads")
        if min(self.steps, self.vae_steps, self.batch_size, self.n_images) <= 0:
            raise ConfigError("steps, vae_steps, batch_size and n_images must be positive")
        if not 0 <= self.p_blob < 1:
            raise ConfigError(f"p_blob must be in [0, 1), got {self.p_blob}")
        if any(c % 8 for c in (*self.unet_channels, *self.vae_channels)):
            raise ConfigError("UNet and VAE channel counts must be multiples of 8 (group norm)")


# --------------------------------------------------------------------------------------------
# Model builders (SD architecture at toy scale)


def build_vae(config: ToyWorldTrainConfig):
    from diffusers import AutoencoderKL

    n = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(config.vae_channels),
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=config.image_size,
    )


def build_text_encoder(config: ToyWorldTrainConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_hidden,
        intermediate_size=4 * config.text_hidden,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=config.text_hidden,
    )
    return CLIPTextModel(text_config)


def build_unet(config: ToyWorldTrainConfig):
    from diffusers import UNet2DConditionModel

    n = len(config.unet_channels)
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    return UNet2DConditionModel(
        sample_size=config.image_size // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(config.unet_channels),
        layers_per_block=config.unet_layers_per_block,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=config.text_hidden,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=8,
    )


def noise_schedule_kwargs() -> dict:
    """Stable Diffusion's training noise schedule (scaled-linear betas, 1000 steps)."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
    }


# --------------------------------------------------------------------------------------------
# Small helpers


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _scene_arrays(scenes: list, vocab: Vocabulary) -> dict[str, torch.Tensor]:
    """Scene metadata as int tensors (kind, shape, colour, style, character; -1 = none)."""
    kinds = ("object", "character", "hazard", "blob")

    def index(options, value) -> int:
        return list(options).index(value) if value is not None else -1

    rows = [
        (
            kinds.index(s.kind),
            index(vocab.shapes, s.shape),
            index(vocab.colour_names, s.colour),
            index(vocab.style_names, s.style),
            index(vocab.character_names, s.character),
        )
        for s in scenes
    ]
    return {"scenes": torch.tensor(rows, dtype=torch.int64)}


def _scene_from_row(row: list[int], vocab: Vocabulary):
    from ace_erasure.toyworld.render import Scene

    kind, shape, colour, style, character = row
    kind_name = ("object", "character", "hazard", "blob")[kind]
    return Scene(
        kind_name,  # type: ignore[arg-type]
        shape=vocab.shapes[shape] if shape >= 0 else None,
        colour=vocab.colour_names[colour] if colour >= 0 else None,
        style=vocab.style_names[style] if style >= 0 else None,
        character=vocab.character_names[character] if character >= 0 else None,
    )


# --------------------------------------------------------------------------------------------
# Stages


def _stage_judge(config: ToyWorldTrainConfig, out: Path, progress: Progress | None) -> dict:
    judge_dir = out / "judge"
    if (judge_dir / "judge_config.json").is_file():
        return {"skipped": True}
    start = time.time()
    judge = train_judge(
        config.judge,
        config.seed,
        progress=(lambda s, n, i: progress("judge", s, n, i)) if progress else None,
    )
    # the wall time goes to the manifest only: the saved files depend on the seed alone
    judge.save(judge_dir)
    normal_permissions(judge_dir)
    return {"wall_seconds": round(time.time() - start, 1)}


def _diffusion_scenes(
    config: ToyWorldTrainConfig, n: int, rng: np.random.Generator, vocab: Vocabulary
):
    # captioned blobs (p_blob), no empty backgrounds
    mix = (*(p * (1 - config.p_blob) for p in config.scene_mix), config.p_blob, 0.0)
    held_out = frozenset(config.held_out_pairs)
    return [sample_scene(rng, vocab, mix, config.p_style, exclude_pairs=held_out) for _ in range(n)]


def _stage_vae(config: ToyWorldTrainConfig, out: Path, progress: Progress | None) -> dict:
    work = out / "_work"
    vae_dir = work / "vae"
    if (vae_dir / "config.json").is_file():
        return {"skipped": True}
    vocab = vocabulary()
    torch.manual_seed(config.seed + 1)
    rng = np.random.default_rng(config.seed + 1)
    vae = build_vae(config)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=1e-4)
    start, loss_log = time.time(), []
    # Blobs and empty backgrounds too: an erased model draws them, and the VAE must decode them.
    mix = (*config.scene_mix, 0.06, 0.02)
    for step in range(config.vae_steps):
        scenes = [
            sample_scene(rng, vocab, mix, config.p_style) for _ in range(config.vae_batch_size)
        ]
        x = images_to_tensor([render(s, rng, config.image_size, vocab) for s in scenes])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        lr = config.vae_lr * 0.5 * (1 + math.cos(math.pi * step / config.vae_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_log.append(float(loss.detach()))
        if progress:
            progress("vae", step + 1, config.vae_steps, {"loss": loss_log[-1]})
    vae.eval()
    # Latent scale as Stable Diffusion stores it: 1 / std of the latents.
    with torch.no_grad():
        scenes = [sample_scene(rng, vocab, mix, config.p_style) for _ in range(512)]
        x = images_to_tensor([render(s, rng, config.image_size, vocab) for s in scenes])
        latents = vae.encode(x).latent_dist.mean
        recon = vae.decode(latents).sample
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    tmp = vae_dir.with_name("vae.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp)
    tmp.replace(vae_dir)
    return {
        "wall_seconds": round(time.time() - start, 1),
        "final_loss": float(np.mean(loss_log[-50:])),
        "validation_mse": float(F.mse_loss(recon, x)),
        "scaling_factor": float(1.0 / latents.std()),
    }


def _stage_latents(config: ToyWorldTrainConfig, out: Path, progress: Progress | None) -> dict:
    from diffusers import AutoencoderKL

    path = out / "_work" / "latents.safetensors"
    if path.is_file():
        return {"skipped": True}
    vocab = vocabulary()
    rng = np.random.default_rng(config.seed + 2)
    vae = AutoencoderKL.from_pretrained(out / "_work" / "vae").eval()
    start, chunk = time.time(), 500
    scenes = _diffusion_scenes(config, config.n_images, rng, vocab)
    moments = []
    with torch.no_grad():
        for begin in range(0, len(scenes), chunk):
            batch = scenes[begin : begin + chunk]
            x = images_to_tensor([render(s, rng, config.image_size, vocab) for s in batch])
            posterior = vae.encode(x).latent_dist
            moments.append(torch.cat([posterior.mean, posterior.std], 1))
            if progress:
                progress("latents", min(begin + chunk, len(scenes)), len(scenes), {})
    atomic_save({"moments": torch.cat(moments), **_scene_arrays(scenes, vocab)}, path)
    return {"wall_seconds": round(time.time() - start, 1), "images": len(scenes)}


class _EMA:
    """Exponential moving average of parameters (the exported weights)."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.shadow = copy.deepcopy(module).requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for p, q in zip(module.parameters(), self.shadow.parameters()):
            q.mul_(d).add_(p.detach(), alpha=1 - d)


def _stage_unet(config: ToyWorldTrainConfig, out: Path, progress: Progress | None) -> dict:
    from diffusers import DDPMScheduler

    work = out / "_work"
    final = work / "unet_final.safetensors"
    if final.is_file():
        return json.loads((work / "unet_log.json").read_text()) | {"skipped": True}
    vocab = vocabulary()
    tokenizer = build_tokenizer(work / "tokenizer")
    torch.manual_seed(config.seed + 3)
    unet, text_encoder = build_unet(config), build_text_encoder(config, tokenizer)
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    ema_unet, ema_text = _EMA(unet, config.ema_decay), _EMA(text_encoder, config.ema_decay)
    data = load_file(str(work / "latents.safetensors"))
    moments, scene_rows = data["moments"], data["scenes"].tolist()
    scaling = float(json.loads((work / "vae" / "config.json").read_text())["scaling_factor"])
    noise_scheduler = DDPMScheduler(**noise_schedule_kwargs())
    rng = np.random.default_rng(config.seed + 4)
    step, log, elapsed_before = 0, [], 0.0

    state_path, meta_path = work / "unet_state.safetensors", work / "unet_state.json"
    if state_path.is_file() and meta_path.is_file():
        state = load_file(str(state_path))
        meta = json.loads(meta_path.read_text())
        unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
        text_encoder.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("text.")})
        ema_unet.shadow.load_state_dict(
            {k[9:]: v for k, v in state.items() if k.startswith("ema_unet.")}
        )
        ema_text.shadow.load_state_dict(
            {k[9:]: v for k, v in state.items() if k.startswith("ema_text.")}
        )
        restore_optimizer(optimizer, params, state)
        torch.set_rng_state(state["torch_rng"].to(torch.uint8))
        rng.bit_generator.state = meta["numpy_rng"]
        step, log, elapsed_before = meta["step"], meta["log"], meta["elapsed_seconds"]
        logger.info("resuming UNet training at step %d", step)

    def checkpoint() -> None:
        tensors = {f"unet.{k}": v for k, v in unet.state_dict().items()}
        tensors |= {f"text.{k}": v for k, v in text_encoder.state_dict().items()}
        tensors |= {f"ema_unet.{k}": v for k, v in ema_unet.shadow.state_dict().items()}
        tensors |= {f"ema_text.{k}": v for k, v in ema_text.shadow.state_dict().items()}
        tensors |= optimizer_tensors(optimizer, params)
        tensors["torch_rng"] = torch.get_rng_state()
        atomic_save(tensors, state_path)
        meta = {
            "step": step,
            "log": log,
            "numpy_rng": rng.bit_generator.state,
            "elapsed_seconds": elapsed_before + time.time() - start,
        }
        atomic_write_text(meta_path, json.dumps(meta))

    start, window = time.time(), []
    unet.train()
    text_encoder.train()
    while step < config.steps:
        index = rng.integers(0, len(moments), size=config.batch_size)
        mean, std = moments[index].chunk(2, dim=1)
        latents = (mean + std * torch.randn_like(std)) * scaling
        captions = [
            ""
            if rng.random() < config.p_uncond
            else caption(_scene_from_row(scene_rows[i], vocab), rng, config.caption, vocab)
            for i in index.tolist()
        ]
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=MAX_LENGTH,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),))
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, text_encoder(ids).last_hidden_state).sample
        loss = F.mse_loss(prediction, noise)
        warm = min(1.0, (step + 1) / config.warmup_steps)
        decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in optimizer.param_groups:
            group["lr"] = config.lr * warm * decay
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema_unet.update(unet, step)
        ema_text.update(text_encoder, step)
        step += 1
        window.append(float(loss.detach()))
        if step % 100 == 0 or step == config.steps:
            log.append(
                {
                    "step": step,
                    "loss": round(float(np.mean(window)), 5),
                    "seconds": round(elapsed_before + time.time() - start, 1),
                }
            )
            window = []
            logger.info("unet step %d loss %.4f", step, log[-1]["loss"])
        if progress:
            progress(
                "unet", step, config.steps, {"loss": window[-1] if window else log[-1]["loss"]}
            )
        if step % config.checkpoint_every == 0 or step == config.steps:
            checkpoint()

    weights = {f"unet.{k}": v for k, v in ema_unet.shadow.state_dict().items()}
    weights |= {f"text.{k}": v for k, v in ema_text.shadow.state_dict().items()}
    summary = {
        "steps": step,
        "log": log,
        "wall_seconds": round(elapsed_before + time.time() - start, 1),
    }
    atomic_write_text(work / "unet_log.json", json.dumps(summary))
    atomic_save(weights, final)
    return summary


def _stage_export(config: ToyWorldTrainConfig, out: Path) -> None:
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline

    work = out / "_work"
    tokenizer = build_tokenizer(work / "tokenizer")
    unet, text_encoder = build_unet(config), build_text_encoder(config, tokenizer)
    weights = load_file(str(work / "unet_final.safetensors"))
    unet.load_state_dict({k[5:]: v for k, v in weights.items() if k.startswith("unet.")})
    text_encoder.load_state_dict({k[5:]: v for k, v in weights.items() if k.startswith("text.")})
    scheduler = DPMSolverMultistepScheduler(**noise_schedule_kwargs(), steps_offset=1)
    vae = AutoencoderKL.from_pretrained(work / "vae")
    vae.register_to_config(_name_or_path="")  # no machine-specific path in the shipped config
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = out / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    # Ship the compact vocab.json + merges.txt form (1.5 MB, loads in transformers 4 and 5)
    # instead of the 3.5 MB tokenizer.json that save_pretrained writes.
    shutil.rmtree(tmp / "tokenizer")
    write_clip_vocabulary(tmp / "tokenizer")
    normal_permissions(tmp)
    shutil.rmtree(out / "model", ignore_errors=True)
    tmp.replace(out / "model")


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "ace_erasure": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def write_manifest(out: Path, config: ToyWorldTrainConfig, stages: dict) -> dict:
    files = {  # only what is shipped: the pipeline and the judge
        str(p.relative_to(out)): sha256_file(p)
        for shipped in ("model", "judge")
        for p in sorted((out / shipped).rglob("*"))
        if p.is_file()
    }
    manifest = {
        "name": "ToyWorld",
        "config": asdict(config),
        "stages": stages,
        "files": files,
        "versions": _versions(),
        "cpu_threads": torch.get_num_threads(),
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def train_toyworld(
    config: ToyWorldTrainConfig, out: str | Path, progress: Progress | None = None
) -> dict:
    """Train (or resume) every stage into ``out``; returns the manifest."""
    config.validate()
    out_dir = Path(out)
    (out_dir / "_work").mkdir(parents=True, exist_ok=True)
    config_path = out_dir / "_work" / "train_config.json"
    config_json = json.dumps(asdict(config), indent=2, sort_keys=True)
    if config_path.is_file() and config_path.read_text() != config_json:
        from ace_erasure.errors import ConfigError

        raise ConfigError(
            f"{out_dir} holds a run with a different config; "
            "resume with the same options or use a new --out"
        )
    atomic_write_text(config_path, config_json)
    stages_path = out_dir / "_work" / "stages.json"
    stages = json.loads(stages_path.read_text()) if stages_path.is_file() else {}

    def run(name: str, fn: Callable[[], dict | None]) -> None:
        result = fn()
        if result is not None and not result.get("skipped"):
            stages[name] = result
            atomic_write_text(stages_path, json.dumps(stages, indent=2))

    run("judge", lambda: _stage_judge(config, out_dir, progress))
    run("vae", lambda: _stage_vae(config, out_dir, progress))
    run("latents", lambda: _stage_latents(config, out_dir, progress))
    run("unet", lambda: _stage_unet(config, out_dir, progress))
    _stage_export(config, out_dir)
    judge = Judge.load(out_dir / "judge")
    stages["judge"] = stages.get("judge", {}) | {
        "held_out_accuracy": judge.metadata.get("held_out_accuracy")
    }
    stages["vae"]["judge_accuracy_on_reconstructions"] = vae_reconstruction_accuracy(
        config, out_dir, judge
    )
    return write_manifest(out_dir, config, stages)


@torch.no_grad()
def vae_reconstruction_accuracy(
    config: ToyWorldTrainConfig, out: Path, judge: Judge, n: int = 1000
) -> dict:
    """Judge accuracy per head on VAE reconstructions of fresh rendered scenes (VAE ceiling)."""
    from diffusers import AutoencoderKL

    vocab = vocabulary()
    vae = AutoencoderKL.from_pretrained(out / "model" / "vae").eval()
    rng = np.random.default_rng(config.seed + 5)
    mix = (*config.scene_mix, 0.0, 0.0)
    scenes = [sample_scene(rng, vocab, mix, config.p_style) for _ in range(n)]
    x = images_to_tensor([render(s, rng, config.image_size, vocab) for s in scenes])
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample
    from PIL import Image

    arrays = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    images = [Image.fromarray(a) for a in arrays]
    classes = head_classes(vocab)
    targets = {
        h: torch.tensor([classes[h].index(scene_labels(s, vocab)[h]) for s in scenes])
        for h in classes
    }
    probs = judge.predict_proba(images)
    return {h: round(float((probs[h].argmax(-1) == targets[h]).float().mean()), 4) for h in classes}
