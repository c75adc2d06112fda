"""Ray Tune search over the refinement reward weights."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SearchConfig:
    """Reward-weight search; off unless ``enabled``."""

    enabled: bool = False
    num_samples: int = 4
    """Trials to run."""
