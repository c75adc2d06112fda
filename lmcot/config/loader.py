"""Build frozen config dataclasses from YAML plus dotted ``--set`` overrides.

One source of truth: the dataclasses in this package. YAML keys are spelled as
the fields; an unknown key or a wrong type fails naming the file, the dotted key
and the closest valid key, before any model or Ray worker starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml


RUN_ONLY = {"fingerprint": False}
"""Field metadata of a setting that says how or where work runs, not what it computes
(resources, retries, timeouts, concurrency): left out of every stage identity, so changing
it neither renames nor reruns a stage."""


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and the fix."""


def _closest(name: str, options: list[str], where: str = "") -> str:
    prefix = f"{where}." if where else ""
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    if match:
        return f" (did you mean '{prefix}{match[0]}'?)"
    return f" (valid keys under '{where or 'top level'}': {', '.join(sorted(options))})"


def _is_optional(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert containers."""
    optional, tp = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: null is not allowed here; give a {getattr(tp, '__name__', tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {type(value).__name__}")
        return build(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        key_tp, val_tp = typing.get_args(tp)
        return {_coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads ``2e-3`` (no dot) as a string; everyone means the number
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(
                f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}"
            )
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported field type {tp!r}")


def build(cls, raw: dict, where: str = ""):
    """Instantiate dataclass ``cls`` from a mapping, checking keys and types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown key '{path}'{_closest(str(key), names, where)}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def overlay(cls, base: dict, top: dict) -> dict:
    """Lay ``top`` over ``base``: nested sections merge, other values (lists, dicts) replace.

    Unknown keys are kept, so that :func:`build` reports them with a suggestion.
    """
    hints = typing.get_type_hints(cls)
    merged = dict(base)
    for key, value in top.items():
        tp = _is_optional(hints[key])[1] if key in hints else None
        if tp is not None and dataclasses.is_dataclass(tp) and isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = overlay(tp, base[key], value)
        else:
            merged[key] = value
    return merged


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[int(part)]
            continue
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``section.field=value`` strings (values parsed as YAML scalars/lists)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.field=value, e.g. --set eval.limit=8")
        key, text = item.split("=", 1)
        try:
            _set_dotted(raw, key.strip(), yaml.safe_load(text))
        except (IndexError, ValueError, AttributeError, TypeError):
            raise ConfigError(f"--set {item!r}: '{key}' does not address a config field") from None
    return raw


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (presets live in configs/, e.g. configs/tiny.yaml)")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    return data


def to_dict(obj) -> Any:
    """Plain-data view of a config (for YAML snapshots, hashing and Ray)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def fingerprint_dict(obj) -> Any:
    """:func:`to_dict` without the run-only fields (field metadata :data:`RUN_ONLY`, e.g.
    ``ModelSpec.ray_resource``, ``ScalingConfig.max_failures``): what a stage identity hashes,
    so changing how work runs reruns and renames nothing."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: fingerprint_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if f.metadata.get("fingerprint", True)}
    if isinstance(obj, (list, tuple)):
        return [fingerprint_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: fingerprint_dict(v) for k, v in obj.items()}
    return obj


def identity(inputs: dict) -> str:
    """The identity of a stage: a short hash of the :func:`fingerprint_dict` of what it reads.

    ``inputs`` maps names to config sections (dataclasses) or plain values, including the
    identities of the stages it reads from. The one rule every stage and the pipeline use
    to decide whether work is already done.

    >>> from lmcot.config.training import ScalingConfig
    >>> identity({"s": ScalingConfig(max_failures=0)}) == identity({"s": ScalingConfig(max_failures=5)})
    True
    >>> identity({"s": ScalingConfig(num_workers=1)}) == identity({"s": ScalingConfig(num_workers=2)})
    False
    """
    payload = json.dumps(fingerprint_dict(inputs), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
