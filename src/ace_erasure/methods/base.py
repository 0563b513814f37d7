"""The method interface: every erasure method is a config dataclass and a ``fit`` function.

``fit(pipe, concepts, config, *, seed, world, progress) -> Erasure`` must leave ``pipe`` as it
found it and be a pure function of its arguments (same seed, same bytes). Methods register
themselves by name (:func:`register`); ``ace_erasure.erase(method=NAME)`` and
``ace-erasure erase --method NAME`` find them here, so a new method is one new module plus
its registration.

Configs are dataclasses whose every field has a default and a ``metadata={"help": ...}``
(PEFT's ``LoraConfig`` is the model), validated when built: :func:`check_fields` checks every
value against its annotation (numbers finite, literals among their choices) and the method's
``__post_init__`` adds its own ranges. :func:`build_config` makes a config from a dict, a YAML
file and ``key=value`` overrides, with one clear error for anything wrong.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import yaml

from ace_erasure.concepts import Concept
from ace_erasure.erasure import Erasure
from ace_erasure.errors import ConfigError
from ace_erasure.prompts import PromptWorld


@runtime_checkable
class Progress(Protocol):
    """``progress(stage, step, total, info)``: a stage's progress, ``info`` a few numbers
    (losses) to show; the CLI draws it as bars with an ETA."""

    def __call__(
        self, stage: str, step: int, total: int, info: Mapping[str, float] | None = None
    ) -> None: ...


@runtime_checkable
class Method(Protocol):
    """An erasure method (see the module docstring)."""

    @property
    def name(self) -> str:
        """The registry name ("ace", "uce", ...)."""
        ...

    @property
    def config_class(self) -> type:
        """The config dataclass."""
        ...

    def fit(
        self,
        pipe,
        concepts: Sequence[Concept],
        config: Any,
        *,
        seed: int,
        world: PromptWorld,
        progress: Progress | None = None,
    ) -> Erasure: ...


_REGISTRY: dict[str, Method] = {}


def register(method: Method, *, replace: bool = False) -> Method:
    """Make ``method`` available by its name; a second method of the same name is an error
    unless ``replace``."""
    if not isinstance(method, Method):
        raise TypeError(f"{method!r} does not implement the Method protocol")
    if method.name in _REGISTRY and not replace:
        raise ConfigError(f"a method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def available() -> list[str]:
    """Names of the registered methods."""
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


# ------------------------------------------------------------------------------ configs


def _allowed(annotation: Any) -> tuple[set[type], tuple | None, bool]:
    """(types, literal choices or None, whether None is allowed) of a field annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return set(), typing.get_args(annotation), False
    if origin in (typing.Union, types.UnionType):
        kinds: set[type] = set()
        choices: tuple | None = None
        optional = False
        for arg in typing.get_args(annotation):
            if arg is type(None):
                optional = True
                continue
            sub, sub_choices, _ = _allowed(arg)
            kinds |= sub
            choices = sub_choices if sub_choices is not None else choices
        return kinds, choices, optional
    if isinstance(annotation, type):
        return {annotation}, None, False
    return {object}, None, False


def check_fields(config: Any) -> None:
    """Check every field of a config dataclass against its annotation: the right type (an int
    is a float too), finite numbers, literals among their choices. Raises ConfigError naming
    the field, the value and what it should be."""
    name = type(config).__name__
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        kinds, choices, optional = _allowed(hints[field.name])
        if value is None:
            if optional:
                continue
            raise ConfigError(f"{name}: {field.name} must not be empty (null)")
        if choices is not None and value in choices:
            continue
        if choices is not None and not kinds:
            raise ConfigError(
                f"{name}: {field.name} must be one of {', '.join(map(repr, choices))}, "
                f"got {value!r}"
            )
        if object in kinds:
            continue
        ok = any(
            isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
            for kind in kinds
        ) or (float in kinds and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            wanted = " or ".join(sorted(k.__name__ for k in kinds)) + (
                " or null" if optional else ""
            )
            raise ConfigError(f"{name}: {field.name} must be {wanted}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}: {field.name} must be a finite number, got {value!r}")


def require(config: Any, checks: Sequence[tuple[bool, str]]) -> None:
    """Raise ConfigError("<Config>: message") for the first failed (condition, message)."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{type(config).__name__}: {message}")


def parse_value(text: str) -> Any:
    """A ``--set key=value`` value as YAML reads it (numbers, true/false, null, lists);
    "nan" and "inf" are numbers too, so that the config's finiteness check names them."""
    if text.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(text)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as text: a number is meant
        try:
            return float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            return value
    return value


def read_config_file(path: str | Path) -> dict:
    """A YAML/JSON mapping of option: value (a clear error for a missing or malformed file)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist")
    try:
        loaded = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"config file {file} is not valid YAML: {first}") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {file} must hold a mapping of option: value")
    return loaded


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["rank=8", "gate=head"]`` -> ``{"rank": 8, "gate": "head"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes key=value, got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def build_config(
    method: Method | str,
    config: Any = None,
    *,
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """The method's config from a config object, a dict, a YAML file and overrides (later
    ones win); unknown options and bad values are ConfigErrors."""
    method = get_method(method) if isinstance(method, str) else method
    cls = method.config_class
    if isinstance(config, cls) and file is None and not overrides:
        return config
    options: dict[str, Any] = {}
    if isinstance(config, cls):
        options.update(dataclasses.asdict(typing.cast(Any, config)))
    elif isinstance(config, Mapping):
        options.update(config)
    elif config is not None:
        raise ConfigError(
            f"config for {method.name} must be a {cls.__name__} or a dict, "
            f"got {type(config).__name__}"
        )
    if file is not None:
        options.update(read_config_file(file))
    options.update(overrides or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"unknown {method.name} option(s): {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    try:
        return cls(**options)
    except TypeError as error:  # a value of the wrong type reached a comparison
        raise ConfigError(f"{cls.__name__}: {error}") from error


ConfigValidator = Callable[[Any], None]
