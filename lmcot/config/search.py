"""Ray Tune search over the refinement reward weights (``lmcot search``).

Each trial refines the distilled small LM with one set of reward weights for a few
short rounds, and after each round reports the dev-set F1 of LM-guided CoT and the
mean judged quality of its rationales; ASHA stops the trials that fall behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmcot.config.loader import RUN_ONLY

SAMPLERS = ("random", "grid")


def _default_space() -> dict[str, tuple[float, ...]]:
    return {"task": (1.0,), "factuality": (0.0, 1.0), "relevance": (0.0, 1.0)}


@dataclass(frozen=True)
class SearchConfig:
    """Reward-weight search; the pipeline runs it before refinement when ``enabled``."""

    enabled: bool = field(default=False, metadata=RUN_ONLY)
    """Run the search in ``lmcot run`` (before refinement, which then uses the best weights).
    ``lmcot search`` runs it whatever this says."""
    num_samples: int = 4
    """Trials to run (with ``sampler: grid``: repeats of the whole grid)."""
    space: dict[str, tuple[float, ...]] = field(default_factory=_default_space)
    """Reward name (see ``lmcot.training.rewards.REWARDS``) -> values. One value: that weight is fixed;
    with ``sampler: random`` two values ``[low, high]`` are a uniform range; with ``sampler: grid``
    a list of values to try. Rewards of ``refine.reward_weights`` not named here keep their weight.
    Checked against the rewards before a stage starts (``lmcot.training.search_space.check_reward_config``)."""
    sampler: str = "random"
    """``random`` (each trial draws every range uniformly) or ``grid`` (every combination of the lists)."""
    seed: int = 0
    """Seed of the random sampler (the same seed draws the same trials)."""
    rounds: int = 3
    """Refinement rounds per trial; each is followed by a dev-set evaluation reported to Tune."""
    steps_per_round: int = 2
    """Refinement optimizer steps per round (each round continues from the previous round's model)."""
    grace_period: int = 1
    """ASHA: rounds every trial runs before it may be stopped."""
    reduction_factor: int = 2
    """ASHA: at each rung only the top 1/reduction_factor of the trials continue."""
    eval_limit: int = 16
    """Dev questions per dataset in each round's evaluation (0: the whole dev split)."""
    max_concurrent_trials: int = field(default=1, metadata=RUN_ONLY)
    """Trials running at once (each runs its own training workers and judge actors)."""
    trial_cpus: float = field(default=0.0, metadata=RUN_ONLY)
    """CPUs reserved for a trial's own process, which evaluates after each round. Its training
    workers and judge actors reserve their own (``refine.scaling``, ``refine.judge_num_*``)."""
    trial_gpus: float = field(default=0.0, metadata=RUN_ONLY)
    """GPUs reserved for a trial's own process (the evaluation loads the small and large LMs there)."""

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        for name in ("num_samples", "rounds", "steps_per_round", "grace_period", "max_concurrent_trials"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.grace_period > self.rounds:
            raise ValueError(f"grace_period={self.grace_period} must be <= rounds={self.rounds} "
                             "(ASHA cannot stop a trial before its first rung)")
        if self.reduction_factor < 2:
            raise ValueError("reduction_factor must be >= 2 (ASHA keeps the top 1/reduction_factor of each rung)")
        if self.eval_limit < 0:
            raise ValueError("eval_limit must be >= 0 (0: the whole dev split)")
        if self.trial_cpus < 0 or self.trial_gpus < 0:
            raise ValueError("trial_cpus and trial_gpus must be >= 0")
