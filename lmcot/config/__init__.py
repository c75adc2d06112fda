"""lmcot's configuration: frozen dataclasses, one file per section.

``load_config("configs/tiny.yaml", ["eval.limit=8"])`` reads YAML, applies dotted
overrides and validates every key and type before anything expensive starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lmcot.config.data import DataConfig, DatasetSpec
from lmcot.config.distill import DistillConfig
from lmcot.config.evaluation import EvalConfig
from lmcot.config.generation import GenerationConfig
from lmcot.config.loader import (RUN_ONLY, ConfigError, apply_overrides, build, fingerprint_dict, identity, overlay,
                                 read_yaml, to_dict)
from lmcot.config.models import ModelSpec
from lmcot.config.pipeline import PipelineConfig
from lmcot.config.rationales import RationalesConfig
from lmcot.config.refine import RefineConfig
from lmcot.config.search import SearchConfig
from lmcot.config.serve import ServeConfig
from lmcot.config.training import ScalingConfig

PRESETS_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class Config:
    """Everything one lmcot run needs; each stage reads its own section."""

    seed: int = 0
    """Global seed (data order, sampling, initialisation)."""
    small: ModelSpec = field(default_factory=lambda: ModelSpec("tiny:t5-small"))
    """The lightweight LM that writes rationales (the one lmcot trains)."""
    large: ModelSpec = field(default_factory=lambda: ModelSpec("tiny:t5-large"))
    """The frozen large LM: teacher, answerer and rationale judge."""
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rationales: RationalesConfig = field(default_factory=RationalesConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def sections(self, *names: str) -> dict:
        """``{name: section}`` of the fields a stage reads (``seed`` included by name), the
        ``inputs`` of :func:`~lmcot.config.loader.identity`."""
        return {name: getattr(self, name) for name in names}


def resolve_config_path(path: str | Path) -> Path:
    """``tiny`` or ``paper`` name a preset in ``configs/``; anything else is a file path."""
    p = Path(path)
    if not p.exists() and p.suffix == "" and (PRESETS_DIR / f"{p}.yaml").is_file():
        return PRESETS_DIR / f"{p}.yaml"
    return p


def from_dict(raw: dict, source: str = "<dict>") -> Config:
    try:
        return build(Config, raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a preset or YAML file, apply ``--set`` overrides and validate."""
    raw = to_dict(Config())
    source = "<defaults>"
    if path is not None:
        p = resolve_config_path(path)
        raw = overlay(Config, raw, read_yaml(p))
        source = str(p)
    try:
        apply_overrides(raw, list(overrides))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return from_dict(raw, source)


__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "DatasetSpec",
    "DistillConfig",
    "EvalConfig",
    "GenerationConfig",
    "ModelSpec",
    "RUN_ONLY",
    "PipelineConfig",
    "RationalesConfig",
    "RefineConfig",
    "ScalingConfig",
    "SearchConfig",
    "ServeConfig",
    "fingerprint_dict",
    "from_dict",
    "identity",
    "load_config",
    "resolve_config_path",
]
