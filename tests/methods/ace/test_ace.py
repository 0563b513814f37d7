"""ACE stages 0-1 on tiny random pipelines of every family."""

import pytest
import torch

from ace_erasure import AceConfig, Concept, erase
from ace_erasure.errors import ConfigError
from ace_erasure.models.conditioning import encode_prompts
from ace_erasure.models.plumbing import cross_attention_layers, token_span, tokenizers

FAST = AceConfig(neighbours=1, gate_steps=1, gate_prompts=2)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_erase_changes_only_cross_attention_keys_and_values(tiny_pipes, family):
    pipe = tiny_pipes(family)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    text_before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    erasure = erase(pipe, ["circle"], config=FAST)
    assert {
        k: torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items()
    } == dict.fromkeys(before, True)
    fused = erasure.fuse(pipe)
    changed = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])}
    expected = {
        f"{name}.{p}.weight"
        for name, _ in cross_attention_layers(pipe.unet)
        for p in ("to_k", "to_v")
    }
    assert changed == expected
    assert all(torch.equal(v, pipe.text_encoder.state_dict()[k]) for k, v in text_before.items())
    fused.remove()
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())


def test_edit_moves_concept_keys_to_the_anchor_and_preserve_weight_protects_others(tiny_pipes):
    pipe = tiny_pipes("sd1")
    tok = tokenizers(pipe)[0]
    concept, anchor, other = encode_prompts(
        pipe, ["a photo of a circle", "a photo of a", "a photo of a square"]
    )
    span = token_span(tok, "a photo of a", "a photo of a circle")
    name, module = cross_attention_layers(pipe.unet)[0]
    w = module.to_k.weight.detach().double()
    t, a = (
        concept[span.start].double(),
        anchor[span.start].double(),
    )  # a: the EOS where it was removed

    def edited(preserve_weight: float) -> torch.Tensor:
        config = AceConfig(
            neighbours=0,
            gate="none",
            ridge=1e-4,
            preserve_weight=preserve_weight,
            suffix_weight=0.0,
        )
        return w + erase(pipe, ["circle"], config=config).delta(f"unet.{name}.to_k").double()

    free = edited(0.0)
    # templates map the word to different anchor positions, so the fit is a compromise, not exact
    assert (free @ t - w @ a).norm() < 0.3 * (w @ t - w @ a).norm()
    change = [((edited(pw) - w) @ other.double().T).norm() for pw in (0.0, 1.0, 10.0)]
    assert change[0] > change[1] > change[2]


def test_multi_concept_single_solve_and_gate_modes(tiny_pipes):
    pipe = tiny_pipes("sd1")
    many = erase(pipe, ["circle", "square", "triangle"], config=FAST)
    assert [c.name for c in many.concepts] == ["circle", "square", "triangle"]
    assert many.stats["target_vectors"] > 0
    heads = erase(pipe, ["circle"], config=AceConfig(neighbours=0, gate="head", gate_steps=1))
    name, module = cross_attention_layers(pipe.unet)[0]
    assert len(heads.edits[f"unet.{name}.to_k"].gate) == module.heads
    assert all(0.0 <= g <= 1.0 for e in heads.edits.values() for g in e.gate.tolist())
    # gates are kept apart from the factors and folded only into the saved LoRA
    edit = heads.edits[f"unet.{name}.to_v"]
    rows = edit.up.shape[0] // module.heads
    lora_b = heads.lora_state_dict()[f"unet.{name}.to_v.lora_B.weight"]
    assert torch.allclose(lora_b[:rows], (edit.up[:rows] * edit.gate[0]).float())
    ungated = erase(pipe, ["circle"], config=AceConfig(neighbours=0, gate="none"))
    assert all(e.gate.tolist() == [1.0] for e in ungated.edits.values())
    assert [s.name for s in ungated.stages] == ["stage0_targets", "stage1_closed_form"]


def test_bad_configs_are_clear_errors(tiny_pipes):
    pipe = tiny_pipes("sd1")
    with pytest.raises(ConfigError, match="gate"):
        erase(pipe, ["circle"], config={"gate": "pixel"})
    with pytest.raises(ConfigError, match="unknown ace option"):
        erase(pipe, ["circle"], config={"rnak": 3})
    for bad, word in (
        ({"encode_dtype": "float8"}, "encode_dtype"),
        ({"preserve_rounds": -1}, "preserve_rounds"),
        ({"preserve_focus": 0.5}, "unknown ace option"),  # retired (measured, no gain)
        ({"ridge": float("nan")}, "ridge must be a finite number"),
        ({"ridge": "small"}, "ridge must be float"),
        ({"rank": 2.5}, "rank must be int or null"),
        ({"neighbours": True}, "neighbours must be int"),
        ({"gate_resolution": 4}, "gate_resolution"),
        ({"gate_max": 2.0}, "unknown ace option"),  # retired: gates are always within [0, 1]
    ):
        with pytest.raises(ConfigError, match=word):
            erase(pipe, ["circle"], config=bad)
    with pytest.raises(ConfigError, match="unknown method"):
        erase(pipe, ["circle"], method="magic")
    with pytest.raises(ConfigError, match="singular"):
        erase(
            pipe,
            [Concept("circle")],
            config=AceConfig(
                ridge=0.0, preserve_weight=0.0, neighbours=0, gate="none", suffix_weight=0.0
            ),
        )


def test_empty_anchor_modes(tiny_pipes):
    pipe = tiny_pipes("sd1")

    def edit(concept: Concept, empty_anchor: str) -> torch.Tensor:
        config = AceConfig(neighbours=0, gate="none", empty_anchor=empty_anchor, anchor_push=0.0)
        erasure = erase(pipe, [concept], config=config)
        return torch.cat([erasure.delta(k).flatten() for k in sorted(erasure.edits)])

    thing = Concept("circle", kind="object")
    assert AceConfig().empty_anchor == "prompt"
    assert not torch.equal(edit(thing, "prompt"), edit(thing, "unconditional"))
    # an explicit anchor is used as given, whatever the mode
    anchored = Concept("circle", kind="object", anchor="square")
    assert torch.equal(edit(anchored, "prompt"), edit(anchored, "unconditional"))


def test_automatic_anchor_push_for_explicit_content_and_unconditional_anchors(tiny_pipes):
    pipe = tiny_pipes("sd1")

    def edit(concept: Concept, **options) -> torch.Tensor:
        config = AceConfig(neighbours=0, gate="none", **options)
        erasure = erase(pipe, [concept], config=config)
        return torch.cat([erasure.delta(k).flatten() for k in sorted(erasure.edits)])

    explicit, thing = Concept("gore", kind="explicit"), Concept("circle", kind="object")
    assert torch.equal(edit(explicit), edit(explicit, anchor_push=0.5))
    assert not torch.equal(edit(explicit), edit(explicit, anchor_push=0.0))
    assert torch.equal(edit(thing), edit(thing, anchor_push=0.0))
    # an object mapped onto the unconditional prompt is pushed too
    assert torch.equal(
        edit(thing, empty_anchor="unconditional"),
        edit(thing, empty_anchor="unconditional", anchor_push=0.5),
    )
    assert erase(pipe, [explicit, thing]).stats["anchor_push"] == {"gore": 0.5, "circle": 0.0}
    # a pushed edit moves the concept further than an unpushed one
    assert edit(explicit).norm() > edit(explicit, anchor_push=0.0).norm()


def test_query_run_works_with_any_scheduler_and_restores_it(tiny_pipes):
    from diffusers import PNDMScheduler

    pipe = tiny_pipes("sd1")
    original = pipe.scheduler
    pipe.scheduler = PNDMScheduler.from_config(original.config)
    try:
        erasure = erase(pipe, ["circle"], config=AceConfig(neighbours=0, gate_steps=1))
        assert isinstance(pipe.scheduler, PNDMScheduler)
        assert all(0.0 <= g <= 1.0 for e in erasure.edits.values() for g in e.gate.tolist())
    finally:
        pipe.scheduler = original
