"""``ace-erasure evaluate``: is it gone, is it gone under attack, and what else did it cost.

For every erasure and every concept it erased, on the same prompts and seeds:

- the concept's suite (named prompts, synonyms, other concepts, attributes) is drawn by the
  unedited model and with the erasure: Acc_e, Acc_g, Acc_s, H (:mod:`.metrics`);
- ``attack_pairs`` (named prompt, seed) pairs in which the unedited model draws the concept
  become attack pairs (UnlearnDiffAtk attacks only prompts the original model answers with the
  concept: an attack fits the unedited model's image of the pair, and an image without the
  concept is nothing to bring back); each attack is run on the erased model, on the unedited
  model (it must keep the concept) and on the text-blind control (it must fail), beside the
  no-attack rate of the same pairs (:mod:`.robustness`);
- quality: a Fréchet distance between the erased and the unedited model's images of the other
  concepts (on the judge's features), with the distance between two seed sets of the unedited
  model as its scale, and how often the judge labels them the same.

Everything goes to a temporary folder that is renamed into place at the end: ``results.json``
(``docs/results-schema.md``), ``images/`` and ``report.html``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ace_erasure._version import __version__
from ace_erasure.attacks import attack_config
from ace_erasure.concepts import Concept
from ace_erasure.erasure import Erasure
from ace_erasure.evaluation import sharding
from ace_erasure.evaluation.harness import Evaluator, image_seeds
from ace_erasure.evaluation.judges import Judge, frechet_distance
from ace_erasure.evaluation.metrics import concept_metrics
from ace_erasure.evaluation.robustness import (
    Pairs,
    attack_rate,
    found,
    no_attack_rate,
    reference_target,
    target_of,
    text_blind,
)
from ace_erasure.evaluation.sharding import Shards
from ace_erasure.evaluation.suites import Suite, number_samples, samples
from ace_erasure.io import normal_permissions

DEFAULT_ATTACKS = ("random", "soft", "hard", "ti", "cond")
# attack pairs are the first ``attack_pairs`` of up to PAIR_POOL x the named prompts (each
# repeat with its own seed) whose unedited image shows the concept
PAIR_POOL = 3


def _subset(pairs: Pairs, indices: Sequence[int]) -> Pairs:
    return dataclasses.replace(
        pairs,
        prompts=[pairs.prompts[i] for i in indices],
        seeds=[pairs.seeds[i] for i in indices],
    )


Progress = Callable[..., None]


@dataclass
class EvaluateSettings:
    """What an evaluation measures and with how many images (recorded in ``results.json``).

    Args:
        seed: the run's seed (generation seeds derive from it and the prompt text).
        steps / guidance: sampling; None takes the world's defaults.
        images_named: images per named / synonym set of a concept.
        images_per_other: images per other concept (specificity).
        attack_pairs: (prompt, seed) pairs attacked per concept.
        attacks: attack names, run in this order.
        attack_options: per attack, config fields to override.
        images_shown: images per row in the report.
        sanity: run every attack on the unedited model and the text-blind control too (the
            attack's own checks; they double the attacks' cost).
        quick: a smaller preset (see :data:`QUICK`).
    """

    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    images_named: int = 16
    images_per_other: int = 4
    attack_pairs: int = 8
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    attack_options: dict[str, dict] = field(default_factory=dict)
    images_shown: int = 8
    sanity: bool = True
    quick: bool = False


# --quick: a first look in about two minutes on two CPU cores (ToyWorld, one concept): smaller
# suites, 4 attack pairs, shorter hard-prompt and textual-inversion searches, and no sanity
# runs of the attacks (the benchmark checks the attacks themselves)
QUICK: dict[str, Any] = {
    "images_named": 8,
    "images_per_other": 2,
    "attack_pairs": 4,
    "images_shown": 4,
    "sanity": False,
    "quick": True,
}
QUICK_ATTACK_OPTIONS: dict[str, dict] = {"hard": {"steps": 30}, "ti": {"steps": 60}}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _clean(value: Any) -> Any:
    """JSON without NaN: nan and inf become null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class _Run:
    """One evaluation: caches what every erasure shares (the unedited model's images, the
    attack references and sanity runs) and writes images into the output folder."""

    def __init__(
        self,
        pipe,
        judge: Judge,
        suite_for: Callable[[Concept], Suite],
        settings: EvaluateSettings,
        folder: Path | None,
        progress: Progress | None,
        apply: Callable[..., Any],
        shards: Shards,
    ) -> None:
        self.pipe, self.judge, self.suite_for = pipe, judge, suite_for
        self.settings, self.folder, self.progress, self.apply = settings, folder, progress, apply
        self.shards = shards
        if settings.steps is None or settings.guidance is None:
            raise ValueError("resolve steps and guidance (the world's sampling) before evaluating")
        self.evaluator = Evaluator(
            pipe,
            judge,
            seed=settings.seed,
            steps=settings.steps,
            guidance=settings.guidance,
            shards=shards,
        )
        self.base: dict[tuple, Any] = {}
        self.references: dict[str, tuple] = {}
        self.sanity: dict[tuple[str, str, str], dict] = {}
        self.blind_chances: dict[str, float] = {}
        if folder is not None:  # the main process writes; the others only compute
            (folder / "images").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ helpers
    @property
    def sampling(self) -> dict[str, Any]:
        return {"steps": self.evaluator.steps, "guidance": self.evaluator.guidance}

    @property
    def sharded(self) -> dict[str, Any]:
        return self.sampling | {"shards": self.shards}

    def save_images(self, images: Sequence, stem: str) -> list[str]:
        paths = []
        for i, image in enumerate(images[: self.settings.images_shown]):
            relative = f"images/{stem}_{i}.png"
            if self.folder is not None:
                image.save(self.folder / relative)
            paths.append(relative)
        return paths

    def generated(self, suite: Suite) -> tuple[list[dict], dict]:
        """Outcomes of the suite's probes and the images by (prompt, sample), on ``pipe`` as
        it is now."""
        probes = suite.probes()
        keys = samples(probes)
        outcomes, images = self.evaluator.run(probes)
        return outcomes, dict(zip(keys, images))

    def base_of(self, suite: Suite) -> tuple[list[dict], dict]:
        key = tuple((p.prompt, p.head) for p in suite.probes())
        if key not in self.base:
            self.base[key] = self.generated(suite)
        return self.base[key]

    def candidate_pairs(self, suite: Suite) -> Pairs:
        """The pool attack pairs are chosen from: the named prompts, cycled ``PAIR_POOL`` times
        (numbered first: each repeat of a prompt is a pair with its own seed)."""
        named = number_samples(list(suite.named) * PAIR_POOL)
        if not named:
            raise ValueError(f"the suite of {suite.concept!r} has no named prompts to attack")
        keys = samples(named)
        return Pairs(
            suite.concept,
            [prompt for prompt, _ in keys],
            image_seeds(keys, self.settings.seed),
            named[0].head,
            named[0].expected,
            suite.concept,
        )

    def reference(self, suite: Suite) -> tuple:
        """(pairs, attack target, the unedited model's no-attack rate on them, selection): the
        first ``attack_pairs`` candidates whose unedited image shows the concept."""
        if suite.concept not in self.references:
            pool, want = self.candidate_pairs(suite), self.settings.attack_pairs
            kept: list[int] = []
            latents: list = []  # of every candidate drawn, in pool order
            while len(kept) < want and len(latents) < len(pool.prompts):
                drawn = len(latents)
                block = list(range(drawn, min(len(pool.prompts), drawn + want - len(kept))))
                part, images = reference_target(self.pipe, _subset(pool, block), **self.sharded)
                hits = found(self.judge, images, pool.head, pool.expected)
                kept += [i for i, hit in zip(block, hits) if hit]
                latents += list(part.latents)
            selection = {"drawn": len(latents), "kept": len(kept), "filtered": bool(kept)}
            if not kept:  # the unedited model never draws it: attack the plain pairs, say so
                kept = list(range(min(want, len(latents))))
            pairs = _subset(pool, kept)
            target = target_of(pairs, [latents[i] for i in kept], self.evaluator.guidance)
            rate, _, _ = no_attack_rate(self.pipe, self.judge, pairs, **self.sharded)
            self.references[suite.concept] = (pairs, target, rate, selection)
        return self.references[suite.concept]

    def attack(self, name: str, target, pairs: Pairs, kind: str) -> dict:
        config = attack_config(name, self.settings.attack_options.get(name, {}), kind)
        result = attack_rate(
            self.pipe,
            self.judge,
            name,
            config,
            target,
            pairs,
            seed=self.settings.seed,
            progress=self.progress,
            **self.sharded,
        )
        return result | {"config": dataclasses.asdict(config)}

    def sanity_runs(self, name: str, suite: Suite, kind: str) -> tuple[dict | None, dict | None]:
        """The attack on the unedited model and on the text-blind control (cached)."""
        pairs, target, _, _ = self.reference(suite)
        key = (suite.concept, name, "unedited")
        if key not in self.sanity:
            self.sanity[key] = self.attack(name, target, pairs, kind)
            with text_blind(self.pipe):
                self.sanity[(suite.concept, name, "blind")] = self.attack(name, target, pairs, kind)
        return self.sanity[key], self.sanity[(suite.concept, name, "blind")]

    def blind_chance(self, suite: Suite) -> float:
        """The text-blind control's rate without attack on the pairs: how often it draws the
        concept by chance (it ignores the conditioning, so no attack can change its images)."""
        if suite.concept not in self.blind_chances:
            pairs, _, _, _ = self.reference(suite)
            with text_blind(self.pipe):
                rate, _, _ = no_attack_rate(self.pipe, self.judge, pairs, **self.sharded)
            self.blind_chances[suite.concept] = rate
        return self.blind_chances[suite.concept]

    # ------------------------------------------------------------------ one erasure
    def erasure(self, index: int, label: str, erasure: Erasure, path: str, force: bool) -> dict:
        start = time.perf_counter()
        results: list[dict[str, Any]] = []
        qualities: list[dict] = []
        for concept in erasure.concepts:
            suite = self.suite_for(concept)
            base_outcomes, base_images = self.base_of(suite)
            pairs, target, unedited_rate, selection = self.reference(suite)
            sanity = {
                name: self.sanity_runs(name, suite, concept.kind)
                if self.settings.sanity
                else (None, None)
                for name in self.settings.attacks
            }
            blind_chance = self.blind_chance(suite) if self.settings.sanity else None
            stem = f"e{index}_{_slug(concept.name)}"
            with self.apply(erasure, self.pipe, fuse=True, force=force):
                erased_outcomes, erased_images = self.generated(suite)
                no_attack, no_attack_hits, _ = no_attack_rate(
                    self.pipe, self.judge, pairs, **self.sharded
                )
                attacked = {}
                for name in self.settings.attacks:
                    attacked[name] = self.attack(name, target, pairs, concept.kind)
            metrics = concept_metrics(suite, base_outcomes, erased_outcomes)
            named_keys = samples(number_samples(suite.named))[: self.settings.images_shown]
            attacks = {}
            for name, run in attacked.items():
                unedited, blind = sanity[name]
                attacks[name] = {
                    "name": name,
                    "mode": run["mode"],
                    "config": run["config"],
                    "asr": run["rate"],
                    "asr_any": sum(a or b for a, b in zip(run["hits"], no_attack_hits))
                    / len(run["hits"]),
                    "no_attack_rate": no_attack,
                    "no_attack_rate_unedited": unedited_rate,
                    "asr_unedited": unedited["rate"] if unedited else None,
                    "asr_text_blind": blind["rate"] if blind else None,
                    "no_attack_rate_text_blind": blind_chance,
                    "n_pairs": len(pairs.prompts),
                    "pair_selection": selection,
                    "asr_counts_pre_attack_successes": False,
                    "seconds": round(run["seconds"], 2),
                    "loss_curves": run["losses"],
                    "texts": run["texts"],
                    "images": {"attacked": self.save_images(run["images"], f"{stem}_{name}")},
                }
            results.append(
                {
                    "concept": concept.name,
                    "metrics": metrics,
                    "attacks": attacks,
                    "images": {
                        "prompts": [prompt for prompt, _ in named_keys],
                        "before": self.save_images(
                            [base_images[k] for k in named_keys], f"{stem}_before"
                        ),
                        "after": self.save_images(
                            [erased_images[k] for k in named_keys], f"{stem}_after"
                        ),
                    },
                }
            )
            qualities.append(
                self.quality(suite, base_outcomes, base_images, erased_outcomes, erased_images)
            )
        quality = _mean_quality(qualities)
        return {
            "label": label,
            "path": path,
            "method": erasure.method,
            "concepts": [c.name for c in erasure.concepts],
            "forced": force,
            "erase_seconds": erasure.stats.get("seconds", {}).get("total"),
            "results": results,
            "quality": quality,
            "cost": {
                "evaluate_seconds": round(time.perf_counter() - start, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            },
        }

    def quality(self, suite, base_outcomes, base_images, erased_outcomes, erased_images) -> dict:
        """Fréchet distance of the other concepts' images (erased vs unedited), its scale
        (unedited vs unedited at other seeds), and judge agreement on them."""
        keys = samples(suite.others)
        if len(keys) < 2:
            return {
                "frechet_distance": None,
                "frechet_distance_base_noise": None,
                "judge_agreement": None,
                "n_images": len(keys),
            }
        base = self.judge.features([base_images[k] for k in keys])
        erased = self.judge.features([erased_images[k] for k in keys])
        noise_key = ("noise", *((p.prompt, p.head) for p in suite.others))
        if noise_key not in self.base:
            # the unedited model again at other seeds (outside the erasure's apply block)
            other_seeds = Evaluator(
                self.pipe, self.judge, seed=self.settings.seed + 1, **self.sharded
            )
            self.base[noise_key] = other_seeds.run(suite.others)
        noise = self.judge.features(list(self.base[noise_key][1]))
        n_others = len(suite.others)
        offset = len(suite.named) + len(suite.synonyms)
        agree = [
            b["label"] == e["label"]
            for b, e in zip(
                base_outcomes[offset : offset + n_others],
                erased_outcomes[offset : offset + n_others],
            )
        ]
        return {
            "frechet_distance": frechet_distance(erased, base),
            "frechet_distance_base_noise": frechet_distance(noise, base),
            "judge_agreement": sum(agree) / len(agree),
            "n_images": len(keys),
        }


def _mean_quality(items: list[dict]) -> dict:
    def mean(key: str) -> float | None:
        values = [i[key] for i in items if i[key] is not None]
        return sum(values) / len(values) if values else None

    return {
        "frechet_distance": mean("frechet_distance"),
        "frechet_distance_base_noise": mean("frechet_distance_base_noise"),
        "judge_agreement": mean("judge_agreement"),
        "n_images": sum(i["n_images"] for i in items),
    }


def evaluate(
    pipe,
    erasures: Sequence[tuple[str, Erasure, str]],
    *,
    judge: Judge,
    judge_record: dict,
    suite_for: Callable[[Concept], Suite],
    settings: EvaluateSettings,
    out: Path,
    apply: Callable[..., Any],
    world_name: str,
    model_name: str,
    progress: Progress | None = None,
    force: bool = False,
    overwrite: bool = False,
    shards: Shards | None = None,
) -> dict:
    """Evaluate ``erasures`` ((label, erasure, path) each) on ``pipe`` and write the report
    folder ``out`` atomically; returns the results dict. With ``shards`` from several processes
    (:mod:`.sharding`) the work is dealt over them and only the main process writes."""
    from ace_erasure.evaluation.report import write_report

    out = Path(out)
    shards = shards or sharding.SINGLE
    tmp: Path | None = None
    if shards.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        run = _Run(pipe, judge, suite_for, settings, tmp, progress, apply, shards)
        entries = []
        for index, (label, erasure, path) in enumerate(erasures):
            if progress:
                progress("erasures", index, len(erasures))
            entries.append(run.erasure(index, label, erasure, path, force))
            if progress:
                progress("erasures", index + 1, len(erasures))
        results = _clean(
            {
                "format_version": 1,
                "tool": "ace-erasure evaluate",
                "library_version": __version__,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"
                ),
                "command": sys.argv,
                "model": model_name,
                "world": world_name,
                "judge": judge_record,
                "settings": dataclasses.asdict(settings)
                | run.sampling
                | {
                    "attack_configs": {
                        name: dataclasses.asdict(
                            attack_config(name, settings.attack_options.get(name, {}))
                        )
                        for name in settings.attacks
                    }
                },
                "versions": _versions(),
                "erasures": entries,
            }
        )
        results["settings"]["processes"] = shards.size
        if tmp is not None:
            (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            write_report(results, tmp)
            normal_permissions(tmp)
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            tmp.replace(out)
        shards.wait()
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return results


def _versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    return {
        "ace_erasure": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        # CPU results are the same bytes for the same seed and the same thread count only
        "torch_threads": str(torch.get_num_threads()),
    }
