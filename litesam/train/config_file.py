"""Run settings from a file and the command line: ``--config run.json|.yaml|.toml`` merged with flags.

Layers, lowest first: the dataclass defaults, the config file, the flags given on the command line (a flag
wins over the file even when it repeats its default value). Reusable by any command whose settings are a
dataclass (``litesam train``'s :class:`~litesam.train.config.TrainConfig`, ``litesam distill``'s own):

* :func:`load_config_file` reads a JSON, YAML (needs PyYAML) or TOML file into a checked, nested dict of the
  dataclass's field names (nested dataclasses as tables / objects); unknown keys and wrongly typed values are a
  :class:`ConfigFileError` naming the key.
* :func:`track_given_flags` makes a parser remember which options were typed; :func:`given_flags` returns
  them from the parsed namespace.
* :func:`flag_values` turns the given flags into the same nested dict (a table renames destinations to
  fields), and :func:`build_config` makes the dataclass from the file's values overlaid with the flags'.

File example (TOML; JSON and YAML hold the same keys)::

    data = "synthetic"
    output_dir = "runs/tiny"
    variant = "litesam_tiny"
    max_steps = 2000
    [losses]
    autoppn = 0.25

Standard library only (TOML through ``tomllib``: Python ≥ 3.11), so ``--help`` stays torch-free.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from ..errors import LiteSamError

#: Namespace attribute holding the destinations of the options given on the command line.
GIVEN = "_given_flags"


class ConfigFileError(LiteSamError, ValueError):
    """A config file that cannot be read, or holds unknown keys or wrongly typed values."""


def load_config_file(path: str | Path, config_type: type) -> dict[str, Any]:
    """Read ``path`` (``.json``, ``.yaml`` / ``.yml``, ``.toml``) and check it against a dataclass.

    Returns:
        The file's values, nested like ``config_type`` (a nested dataclass field holds a dict), unchanged
        except tuples given as lists.
    Raises:
        ConfigFileError: missing or unparsable file, unknown suffix, unknown key, value of the wrong type.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigFileError(f"cannot read config file {path}: {error.strerror or error}") from None
    try:
        if suffix == ".json":
            values = json.loads(text)
        elif suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise ConfigFileError("TOML config files need Python ≥ 3.11; or use JSON/YAML") from None
            values = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigFileError("YAML config files need PyYAML (pip install pyyaml); or use JSON/TOML") from None
            values = yaml.safe_load(text)
        else:
            raise ConfigFileError(f"config file {path}: unknown format {suffix!r} (use .json, .yaml or .toml)")
    except ConfigFileError:
        raise
    except Exception as error:  # json, tomllib and yaml each raise their own parse errors
        raise ConfigFileError(f"cannot parse config file {path}: {error}") from None
    if not isinstance(values, dict):
        raise ConfigFileError(f"config file {path} must hold a mapping of settings, not {type(values).__name__}")
    return _checked(values, config_type, f"config file {path}")


def track_given_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` record the destination of every option typed on the command line (in :data:`GIVEN`).

    Each action keeps its class's behaviour; only a subclass that records the destination first is put in
    its place, so ``--help`` (defaults included) and mutually exclusive groups are unchanged.
    """
    for action in parser._actions:  # argparse offers no public list of a parser's actions
        if action.dest not in (argparse.SUPPRESS, "help") and not isinstance(action, argparse._SubParsersAction):
            action.__class__ = _recording(type(action))
    return parser


def given_flags(namespace: argparse.Namespace) -> set[str]:
    """Destinations of the options given on the command line (empty without :func:`track_given_flags`)."""
    return set(getattr(namespace, GIVEN, ()))


def flag_values(namespace: argparse.Namespace, rename: dict[str, str], ignore: set[str]) -> dict[str, Any]:
    """The given flags as a nested dict of field names: destination ``d`` becomes field ``rename.get(d, d)``,
    where ``"a.b"`` is field ``b`` of the nested dataclass field ``a``; destinations in ``ignore`` are left out."""
    values: dict[str, Any] = {}
    for dest in sorted(given_flags(namespace) - ignore):
        *parents, name = rename.get(dest, dest).split(".")
        target = values
        for parent in parents:
            target = target.setdefault(parent, {})
        target[name] = getattr(namespace, dest)
    return values


def build_config(config_type: type, file_values: dict[str, Any], flag_values: dict[str, Any]) -> Any:
    """``config_type`` from the file's values overlaid with the given flags' (both nested dicts of field names).

    Fields in neither keep their dataclass default; the dataclass's own ``__post_init__`` checks still run
    (a ``ValueError`` there is the caller's to report).
    """
    merged = _merge(file_values, flag_values)
    return _instantiate(config_type, merged)


def _recording(action_class: type) -> type:
    if action_class.__dict__.get("_records_given"):
        return action_class
    if action_class not in _RECORDING:

        def __call__(self, parser, namespace, values, option_string=None):
            setattr(namespace, GIVEN, given_flags(namespace) | {self.dest})
            return action_class.__call__(self, parser, namespace, values, option_string)

        _RECORDING[action_class] = type(
            action_class.__name__, (action_class,), {"__call__": __call__, "_records_given": True}
        )
    return _RECORDING[action_class]


_RECORDING: dict[type, type] = {}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _instantiate(config_type: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(config_type)
    kwargs = {}
    for key, value in values.items():
        nested = _dataclass_in(hints[key])
        kwargs[key] = _instantiate(nested, value) if nested is not None and isinstance(value, dict) else value
    return config_type(**kwargs)


def _checked(values: dict[str, Any], config_type: type, where: str) -> dict[str, Any]:
    """Check names and types of ``values`` against ``config_type``'s fields; lists become tuples where needed."""
    hints = typing.get_type_hints(config_type)
    names = [f.name for f in dataclasses.fields(config_type)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigFileError(f"{where}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(names)})")
    checked = {}
    for key, value in values.items():
        hint = hints[key]
        nested = _dataclass_in(hint)
        if nested is not None:
            if not isinstance(value, dict):
                raise ConfigFileError(f"{where}: {key} must be a table of {nested.__name__} settings")
            checked[key] = _checked(value, nested, f"{where}, {key}")
            continue
        converted = _converted(value, hint)
        if converted is _WRONG:
            raise ConfigFileError(f"{where}: {key} = {value!r} does not fit type {_describe(hint)}")
        checked[key] = converted
    return checked


_WRONG = object()


def _converted(value: Any, hint: Any) -> Any:
    """``value`` if it fits the type ``hint`` (a tuple built from a list), else :data:`_WRONG`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            converted = _converted(value, option)
            if converted is not _WRONG:
                return converted
        return _WRONG
    if origin is typing.Literal:
        return value if value in typing.get_args(hint) else _WRONG
    if origin is tuple:
        items = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            return _WRONG
        converted = tuple(_converted(v, h) for v, h in zip(value, items))
        return _WRONG if any(c is _WRONG for c in converted) else converted
    if hint is type(None):
        return None if value is None else _WRONG
    if hint is bool:
        return value if isinstance(value, bool) else _WRONG
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _WRONG
    if hint is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _WRONG
    if hint in (str, Path):
        return value if isinstance(value, str) else _WRONG
    return value


def _describe(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "").replace("pathlib.", "")


def _dataclass_in(hint: Any) -> type | None:
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None
