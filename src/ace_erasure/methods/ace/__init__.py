"""ACE — Attentional Concept Erasure (arXiv 2504.11850), as DESIGN.md §2 reads it.

Stage 0 (:mod:`.targets`) collects, for every concept, target token embeddings aligned with
anchor embeddings, and the preserve set (:mod:`.preserve`). Stage 1 solves one ridge problem
for every cross-attention key/value projection (:mod:`.solve`, ``Δ_l = W_l G``), truncates each
edit to a low rank and computes a closed-form gate per layer or head (:mod:`.gates`): a gated
low-rank edit ``W_l + g_l B_l A_l``. The token-gate mode (:mod:`.token_gate`) applies the same
edit per token through an attention processor.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from ace_erasure.concepts import Concept
from ace_erasure.erasure import Erasure, ModuleEdit, StageRecord
from ace_erasure.linalg import RidgeEditFitter
from ace_erasure.methods.ace import gates as gating
from ace_erasure.methods.ace import token_gate
from ace_erasure.methods.ace.config import ENCODE_DTYPES, AceConfig
from ace_erasure.methods.ace.preserve import PreserveSet
from ace_erasure.methods.ace.solve import solve, truncate
from ace_erasure.methods.ace.targets import anchor_push, collect_targets, concept_prompt_pairs
from ace_erasure.methods.base import Progress
from ace_erasure.models.conditioning import PromptEncoder
from ace_erasure.models.plumbing import base_linear, cross_attention_layers, tokenizers
from ace_erasure.prompts import PromptWorld, attribute_templates, general_prompts, related_pairs

__all__ = ["Ace", "AceConfig"]
logger = logging.getLogger(__name__)


class Ace:
    """The ACE method (registered as "ace")."""

    name = "ace"
    config_class = AceConfig

    @torch.no_grad()
    def fit(
        self,
        pipe,
        concepts: Sequence[Concept],
        config: AceConfig,
        *,
        seed: int,
        world: PromptWorld,
        progress: Progress | None = None,
    ) -> Erasure:
        """ACE stages 0–1 on ``pipe`` (left unchanged) for ``concepts``."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        layers = cross_attention_layers(pipe.unet)
        tokenizer = tokenizers(pipe)[0]
        fitter = RidgeEditFitter(base_linear(layers[0][1].to_k).in_features)
        encode = PromptEncoder(pipe, ENCODE_DTYPES[config.encode_dtype])

        # each concept in its kind's templates and its world's attribute words ("a purple {}")
        contexts = {c.name: attribute_templates(c, world) for c in concepts}
        n_targets = 0
        for i, concept in enumerate(concepts):
            n_targets += collect_targets(
                tokenizer, encode, concept, config, fitter, generator, contexts[concept.name]
            )
            if progress:
                progress("targets", i + 1, len(concepts))
        timings["targets"] = time.perf_counter() - start

        mark = time.perf_counter()
        related = related_pairs(concepts, world)
        general = general_prompts(concepts, world, config.preserve_general, seed)
        preserve = PreserveSet.build(
            related, general, encode([p.text for p in related] + general), tokenizer, config
        )
        timings["preserve"] = time.perf_counter() - mark

        mark = time.perf_counter()
        solved = solve(fitter, preserve, config)
        deltas = {
            f"{name}.{proj}": solved.solution.delta(base_linear(getattr(module, proj)).weight)
            for name, module in layers
            for proj in ("to_k", "to_v")
        }
        tops, rank = truncate(deltas, config, seed)
        method_tensors: dict[str, torch.Tensor] = {}
        method_data: dict[str, Any] = {"mode": config.mode}
        if config.mode == "token_gate":
            target_gram = fitter.statistics()[0]
            kept_gram = preserve.gram(solved.share)
            basis = token_gate.concept_subspace(
                target_gram, kept_gram, min(config.token_gate_rank, fitter.dim)
            )
            threshold, sharpness = token_gate.mask_parameters(
                basis,
                target_gram,
                kept_gram,
                config.token_gate_threshold,
                config.token_gate_sharpness,
            )
            method_tensors[token_gate.BASIS] = basis.float()
            method_data["token_gate"] = {"threshold": threshold, "sharpness": sharpness}
        timings["solve"] = time.perf_counter() - mark

        mark = time.perf_counter()
        gates = self._gates(
            pipe, concepts, config, seed, encode, preserve, deltas, generator, progress
        )
        timings["gates"] = time.perf_counter() - mark

        edits = {}
        for name, _ in layers:
            for proj in ("to_k", "to_v"):
                up, down = tops[f"{name}.{proj}"].factors(rank)
                edits[f"unet.{name}.{proj}"] = ModuleEdit(down, up, gates[name].float())
        stage2 = None
        if config.stage == 2:
            from ace_erasure.methods.ace.finetune import PreservePrompts, finetune

            keep = PreservePrompts(
                related={
                    name: [related[i].text for i in ids]
                    for name, ids in preserve.related_ids.items()
                },
                # how much the closed-form edit moves each related concept
                weights={n: float(d) for n, d in zip(preserve.names, solved.first_change)},
                general=general,
            )
            edits, stage2 = finetune(
                pipe,
                concepts,
                edits,
                keep,
                config,
                seed,
                steps=world.sampling.steps,
                guidance=world.sampling.guidance,
                templates=contexts,
                progress=progress,
            )
            timings["finetune"] = stage2.seconds
        timings["total"] = time.perf_counter() - start
        stats = {
            "target_vectors": n_targets,
            "encoder_passes": encode.passes,
            "preserve_prompts": len(preserve.embeds),
            # relative change of each related concept (first solve), in units of the concept's
            "related_change": {
                n: round(float(d) / max(solved.own_change, 1e-300), 4)
                for n, d in zip(preserve.names, solved.first_change)
            },
            "related_shares": {n: round(float(a), 4) for n, a in zip(preserve.names, solved.share)},
            "preserve_vectors": int(preserve.embeds.shape[0] * preserve.embeds.shape[1]),
            "condition_number": solved.solution.condition_number,
            "ridge_absolute": solved.solution.ridge_absolute,
            "rank": rank,
            "mean_gate": float(torch.cat(list(gates.values())).mean()),
            # the push each concept got (anchor_push=None resolves per concept)
            "anchor_push": {c.name: anchor_push(c, config) for c in concepts},
            "seconds": {k: round(v, 4) for k, v in timings.items()},
        }
        logger.info("ACE fit: %s", stats)
        stages = [
            StageRecord(
                "stage0_targets",
                timings["targets"] + timings["preserve"],
                {"target_vectors": n_targets, "preserve_prompts": len(preserve.embeds)},
            ),
            StageRecord(
                "stage1_closed_form",
                timings["solve"] + timings["gates"],
                {"rank": rank, "gates": {k: v.tolist() for k, v in gates.items()}},
            ),
        ]
        if stage2 is not None:
            stages.append(stage2)
        return Erasure.create(
            pipe,
            edits,
            concepts=concepts,
            method=self.name,
            config=dataclasses.asdict(config),
            seed=seed,
            stages=stages,
            stats=stats,
            method_tensors=method_tensors,
            method_data=method_data,
        )

    @staticmethod
    def _gates(
        pipe,
        concepts: Sequence[Concept],
        config: AceConfig,
        seed: int,
        encode: PromptEncoder,
        preserve: PreserveSet,
        deltas: dict[str, torch.Tensor],
        generator: torch.Generator,
        progress: Progress | None,
    ) -> dict[str, torch.Tensor]:
        """A gate per cross-attention layer (or head), from a short query run on concept
        prompts (see :mod:`.gates`); all ones for ``gate="none"``."""
        layers = cross_attention_layers(pipe.unet)
        if config.gate == "none":
            return {name: torch.ones(1) for name, _ in layers}
        # per concept its first templates, round-robin, at most gate_max_prompts in all (the
        # query run costs UNet passes; 100 concepts need statistics, not 400 prompts)
        per_concept = [
            concept_prompt_pairs(c, config, names=[c.name])[: config.gate_prompts] for c in concepts
        ]
        chosen = [
            pairs[i] for i in range(config.gate_prompts) for pairs in per_concept if i < len(pairs)
        ][: config.gate_max_prompts]
        gate_prompts = [p.text for p in chosen]
        queries = gating.record_queries(pipe, gate_prompts, config, seed)
        concept_embeds = encode(gate_prompts)
        anchor_embeds = encode([p.anchor_text for p in chosen])
        # the preserve side of the gates: the related concepts' prompts (round-robin over them,
        # as many as there are gate prompts) and as many random general captions
        sample = preserve.gate_sample(len(gate_prompts), generator)
        preserve_sample = preserve.embeds[sample] if len(sample) else concept_embeds[:0]
        gates: dict[str, torch.Tensor] = {}
        for name, module in layers:
            gates[name] = gating.layer_gates(
                module,
                queries[name],
                concept_embeds,
                anchor_embeds,
                preserve_sample,
                deltas[f"{name}.to_k"],
                deltas[f"{name}.to_v"],
                config,
            )
            if progress:
                progress("gates", len(gates), len(layers))
        return gates

    def apply(
        self, erasure: Erasure, pipe, scale: float = 1.0, *, fuse: bool = False, force: bool = False
    ):
        """Apply an ACE erasure: its token-gate processors in token-gate mode, else its LoRA
        (as an adapter, or fused)."""
        if token_gate.is_token_gate(erasure):
            return token_gate.install(pipe, erasure, scale, force=force)
        if fuse:
            return erasure.fuse(pipe, scale, force=force)
        return erasure.apply(pipe, scale, force=force)
