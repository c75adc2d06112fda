"""Rationale refinement: RL of the small LM on rationale- and task-oriented rewards."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmcot.config.loader import RUN_ONLY
from lmcot.config.training import ScalingConfig

ALGORITHMS = ("grpo", "rloo")
ASPECT_MODES = ("weighted", "mean")
TASK_METRICS = ("f1", "em")
LOSS_TYPES = ("grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
REWARD_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")


@dataclass(frozen=True)
class RefineConfig:
    """GRPO-family RL from the distilled small LM, rewarded by the frozen large LM."""

    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    algorithm: str = "grpo"
    """``grpo`` (advantage = reward minus the group mean, divided by the group std) or ``rloo``
    (advantage = reward minus the mean of the *other* samples of the same prompt)."""
    reward_weights: dict[str, float] = field(default_factory=lambda: {"task": 1.0})
    """Weight per named reward (see ``lmcot.training.rewards.REWARDS``): ``task``, the eight aspects
    (``factuality`` ... ``readability``), ``quality`` (with ``aspect_mode: mean``) and ``degenerate``.
    The names are checked against the rewards before a stage starts, not when the config loads
    (``lmcot.training.search_space.check_reward_config``): the config knows no reward code."""
    aspect_mode: str = "weighted"
    """How aspect rewards enter the total: ``weighted`` (each aspect named in ``reward_weights``
    with its own weight) or ``mean`` (one aggregated ``quality`` = mean of ``quality_aspects``,
    weighted by ``reward_weights.quality`` against the task reward)."""
    quality_aspects: tuple[str, ...] = ()
    """With ``aspect_mode: mean``: the aspects averaged into ``quality`` (empty: all eight)."""
    task_metric: str = "f1"
    """Task reward: ``f1`` or ``em`` of the large LM's answer from the rationale against the gold answer."""
    num_generations: int = 4
    """Rationales sampled per prompt (the GRPO group)."""
    prompts_per_step: int = 2
    """Prompts per worker per optimizer step (each yields ``num_generations`` rollouts)."""
    beta: float = 0.04
    """KL coefficient to the distilled reference (k3 estimator); 0 skips the reference model."""
    epsilon: float = 0.2
    """Clip range of the policy ratio: ratios outside [1 - epsilon, 1 + epsilon] get no gradient."""
    num_iterations: int = 1
    """Policy updates per batch of rollouts (> 1 makes the ratio and its clipping matter)."""
    scale_rewards: str = "group"
    """GRPO advantage scaling: by the ``group`` std, the ``batch`` std, or ``none`` (Dr. GRPO)."""
    reward_aggregation: str = "sum_then_normalize"
    """How named rewards become GRPO advantages (TRL's ``multi_objective_aggregation``):
    ``sum_then_normalize`` (weighted sum, then ``scale_rewards``) or ``normalize_then_sum`` (each
    reward normalised within its group, then weighted and summed, then normalised over the batch):
    a reward that is constant in a group adds 0 to that group's sum, so where other groups' task
    reward moves, a group whose task reward is flat gets only the small advantages its aspects'
    weights allow. It does not silence the aspects: in a step where the task reward is flat in
    every group they are all that is left, and the batch normalisation scales them back to full
    size (``skip_flat_steps`` is for that step). GRPO only (RLOO keeps its own estimator)."""
    skip_flat_steps: bool = True
    """Take no optimizer step (no policy gradient, no KL term) when the ``task`` reward has no spread
    in any group of the step, on any worker. No rationale then earned a better answer than another,
    so whatever advantage is left is judge noise (or RLOO's KL penalty), scaled to full size by the
    group or batch normalisation; the KL term alone would only pull the policy back by an amount set
    by how often such steps come. Each step's metrics carry ``flat_task_reward_step`` and the running
    ``flat_steps_total``, whatever this says; ``false`` updates on every step (flat ones included).
    The seq2seq loop's: TRL's trainers (causal small LMs) update on every step. Without a ``task``
    reward no step counts as flat."""
    loss_type: str = "dapo"
    """Token-loss aggregation: ``dapo`` (mean over all completion tokens of the batch) or
    ``grpo`` (mean per sequence, then over sequences)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    top_p: float = 1.0
    """Nucleus mass of the rollouts."""
    max_new_tokens: int = 0
    """Rationale length cap of the rollouts (0: ``generation.rationale_max_new_tokens``)."""
    learning_rate: float = 1e-5
    max_steps: int = 20
    """Optimizer steps."""
    save_steps: int = 10
    """Checkpoint every N steps (and at the end); a rerun resumes from the latest one."""
    judge_num_actors: int = field(default=1, metadata=RUN_ONLY)
    """Large-LM actors serving every worker's reward calls (one model each)."""
    judge_num_cpus: float = field(default=0.0, metadata=RUN_ONLY)
    """CPUs reserved per judge actor. 0 shares the workers' CPUs: the policy waits while rewards
    are computed, so on a laptop the two alternate. Give the judge GPUs on a cluster."""
    judge_num_gpus: float = field(default=0.0, metadata=RUN_ONLY)
    """GPUs per judge actor (1 in production: the large LM on its own GPU)."""
    judge_batch_size: int = field(default=32, metadata=RUN_ONLY)
    """Prompts per large-LM forward pass inside a judge actor."""
    judge_batch_wait_ms: float = field(default=5.0, metadata=RUN_ONLY)
    """How long a judge actor waits to merge calls from several workers into one forward pass."""
    judge_timeout_s: float = field(default=600.0, metadata=RUN_ONLY)
    """A reward call that takes longer fails the step (the run then resumes from its checkpoint)."""

    def __post_init__(self):
        for name, value, valid in (
            ("algorithm", self.algorithm, ALGORITHMS),
            ("aspect_mode", self.aspect_mode, ASPECT_MODES),
            ("task_metric", self.task_metric, TASK_METRICS),
            ("loss_type", self.loss_type, LOSS_TYPES),
            ("scale_rewards", self.scale_rewards, SCALE_REWARDS),
            ("reward_aggregation", self.reward_aggregation, REWARD_AGGREGATIONS),
        ):
            if value not in valid:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(valid)}")
        if self.reward_aggregation == "normalize_then_sum" and self.algorithm != "grpo":
            raise ValueError("reward_aggregation=normalize_then_sum is GRPO's: set algorithm: grpo, or "
                             "reward_aggregation: sum_then_normalize for rloo")
        if not isinstance(self.skip_flat_steps, bool):
            raise ValueError(f"skip_flat_steps must be true or false, not {self.skip_flat_steps!r}")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2 (group-relative advantages need a group)")
        if self.beta < 0:
            raise ValueError("beta must be >= 0")
        if not 0 < self.epsilon < 1:
            raise ValueError("epsilon must be in (0, 1)")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("rollouts are sampled: temperature must be > 0 and top_p in (0, 1]")
        for name in ("prompts_per_step", "num_iterations", "max_steps", "save_steps", "judge_num_actors",
                     "judge_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0 (0: generation.rationale_max_new_tokens)")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if self.judge_num_cpus < 0 or self.judge_num_gpus < 0 or self.judge_batch_wait_ms < 0:
            raise ValueError("judge_num_cpus, judge_num_gpus and judge_batch_wait_ms must be >= 0")
        if self.judge_timeout_s <= 0:
            raise ValueError("judge_timeout_s must be > 0")
