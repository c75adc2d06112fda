"""The ``args:`` of a Serve config application, parsed into lmcot's :class:`~lmcot.config.Config`.

``serve deploy serve_configs/lmcot.cpu.yaml`` hands its ``args`` to
``lmcot.stages.serve:build_app``, which parses them here: a preset, config sections laid over it,
dotted overrides, validated in full before any replica starts (an unknown key fails with a
suggestion, naming where it came from).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from lmcot.config import Config, ConfigError, from_dict, resolve_config_path, to_dict
from lmcot.config.loader import apply_overrides, overlay, read_yaml


class AppArgs(BaseModel):
    """``args:`` of a Serve config application: a preset, config sections laid over it, dotted overrides.

    ``{"config": "tiny", "serve": {"max_k": 8}, "set": ["generation.temperature=0.9"]}``: ``config``
    is a preset name (``tiny``, ``paper``, ``qwen``) or an absolute YAML path; any other key is a
    config section (``small``, ``large``, ``generation``, ``data``, ``serve``...) merged over it;
    ``set`` applies ``section.field=value`` overrides last. Unknown keys fail with a suggestion.
    """

    model_config = ConfigDict(extra="allow")

    config: str = "tiny"
    set: list[str] = []


def config_from_args(args: AppArgs | dict) -> Config:
    """The validated :class:`~lmcot.config.Config` that ``args`` describe (ConfigError naming the key)."""
    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args)
    path = resolve_config_path(args.config)
    raw = overlay(Config, to_dict(Config()), read_yaml(path))
    raw = overlay(Config, raw, dict(args.model_extra or {}))
    source = f"{path} + serve args"
    try:
        apply_overrides(raw, list(args.set))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return from_dict(raw, source)
