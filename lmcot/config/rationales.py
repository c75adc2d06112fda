"""Teacher rationale generation (the large LM writes rationales for the training set)."""

from __future__ import annotations

from dataclasses import dataclass

FILTERS = ("em", "f1")


@dataclass(frozen=True)
class RationalesConfig:
    """How the teacher's rationales are drawn, filtered and sharded over Ray Data actors."""

    samples_per_question: int = 1
    """Rationales drawn per training question (sampled at ``generation.temperature`` when > 1)."""
    filter: str = "em"
    """Keep a rationale when the teacher's answer from it is right: ``em`` or ``f1`` >= ``f1_threshold``."""
    f1_threshold: float = 0.5
    num_actors: int = 2
    """Teacher generator actors in the Ray Data pool."""
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_size: int = 8
    """Rows handed to one actor call."""

    def __post_init__(self):
        if self.samples_per_question < 1:
            raise ValueError("samples_per_question must be >= 1")
        if self.filter not in FILTERS:
            raise ValueError(f"filter={self.filter!r} is not one of {', '.join(FILTERS)}")
        if not 0 <= self.f1_threshold <= 1:
            raise ValueError("f1_threshold must be in [0, 1]")
        if self.num_actors < 1 or self.batch_size < 1:
            raise ValueError("num_actors and batch_size must be >= 1")
