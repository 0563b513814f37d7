"""Attacks that try to bring an erased concept back (see :mod:`.base` for the interface).

=========  ==========================================================  ====================
name       what it optimises                                           result
=========  ==========================================================  ====================
random     nothing: k random vocabulary tokens before the prompt       control
soft       k soft input tokens before the prompt (UnlearnDiffAtk)      soft prefix
hard       k real vocabulary tokens, projected search (PEZ)            plain text
ti         one new token in place of the concept's name (CCE)          a new embedding
cond       a free residual on the text encoder's output                upper bound
=========  ==========================================================  ====================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ace_erasure.attacks.base import (
    Adversary,
    AttackResult,
    AttackTarget,
    PlainPrompts,
    generate_attacked,
)
from ace_erasure.attacks.conditioning import ConditioningAttack
from ace_erasure.attacks.hard_prompt import HardPromptAttack
from ace_erasure.attacks.soft_prompt import RandomPrefixControl, SoftPromptAttack
from ace_erasure.attacks.textual_inversion import TextualInversionAttack
from ace_erasure.errors import ConfigError

ATTACKS: dict[str, Any] = {
    attack.name: attack
    for attack in (
        RandomPrefixControl(),
        SoftPromptAttack(),
        HardPromptAttack(),
        TextualInversionAttack(),
        ConditioningAttack(),
    )
}


def get_attack(name: str):
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; available: {', '.join(ATTACKS)}")
    return ATTACKS[name]


def parse_attack_settings(items: Sequence[str]) -> dict[str, dict]:
    """``--attack-set`` values -> options per attack:
    ``["soft.lr=0.03", "soft.steps=100"]`` -> ``{"soft": {"lr": 0.03, "steps": 100}}``."""
    from ace_erasure.methods.base import parse_overrides

    options: dict[str, dict] = {}
    for key, value in parse_overrides(items).items():
        attack, _, option = key.partition(".")
        if not option:
            raise ConfigError(f"--attack-set takes attack.key=value, got {key!r}")
        options[attack] = {**options.get(attack, {}), option: value}
    return options


def attack_config(name: str, options: dict | None = None, kind: str | None = None):
    """The config of attack ``name`` from a dict of its fields (a ConfigError for unknown ones).
    With the erased concept's ``kind``, the attack's defaults for that kind apply first (the
    soft-prompt attack uses 3 tokens for styles); ``options`` override them."""
    attack = get_attack(name)
    cls = attack.config_class
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options or {}) - known)
    if unknown:
        raise ConfigError(f"unknown {name} attack option(s): {', '.join(unknown)}")
    defaults = getattr(attack, "kind_defaults", {}).get(kind, {}) if kind else {}
    return cls(**(defaults | (options or {})))


__all__ = [
    "ATTACKS",
    "Adversary",
    "AttackResult",
    "AttackTarget",
    "PlainPrompts",
    "attack_config",
    "generate_attacked",
    "get_attack",
    "parse_attack_settings",
]
