"""Rationale refinement: RL of the small LM on rationale- and task-oriented rewards."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmcot.config.training import ScalingConfig


@dataclass(frozen=True)
class RefineConfig:
    """GRPO-family RL from the distilled small LM."""

    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    reward_weights: dict[str, float] = field(default_factory=lambda: {"task": 1.0})
    """Weight per named reward (see ``lmcot.rewards.REWARDS``)."""
    num_generations: int = 4
    """Rationales sampled per prompt (the GRPO group)."""
    beta: float = 0.04
    """KL coefficient to the distilled reference."""
    learning_rate: float = 1e-5
    max_steps: int = 20

    def __post_init__(self):
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2 (group-relative advantages need a group)")
        if self.beta < 0:
            raise ValueError("beta must be >= 0")
