"""What ``lmcot eval`` measures."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmcot.config.loader import RUN_ONLY

METHODS = ("standard", "cot", "lm_guided", "gold_rationale", "empty_rationale")
ORACLE_METHODS = ("gold_rationale",)
"""Methods that read the gold supporting facts: reference rows, never a fair evaluation."""


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: a method, optionally with self-consistency."""

    method: str = "lm_guided"
    """``standard`` (large LM answers directly), ``cot`` (large LM reasons then answers) or
    ``lm_guided`` (small LM writes the rationale, large LM answers from it); the reference methods
    ``gold_rationale`` (the large LM answers from the gold supporting facts: an oracle upper bound)
    and ``empty_rationale`` (from an empty rationale: the lower bound)."""
    self_consistency: int = 1
    """Rationales sampled per question and majority-voted (1: one greedy rationale)."""
    adaptive: bool = False
    """Adaptive self-consistency: sample the ``self_consistency`` samples in rounds of
    ``adaptive_round_size`` and stop a question once more samples cannot change its vote
    (:mod:`lmcot.inference.adaptive`)."""
    adaptive_round_size: int = 2
    """Samples per round under ``adaptive`` (>= 2: one sample would be greedy)."""
    limit: int = 0
    """Evaluate the first N dev examples of each dataset (0: all)."""
    judge_limit: int = 0
    """With judged rationales (the report's aspect table): judge those of the first N questions of each
    dataset only (0: all). Eight aspects per rationale make judging cost several times the evaluation."""
    label: str = ""
    """Name of the output folder ``RUN/eval/<label>/``; empty: the method name plus ``-sc<K>`` when K > 1
    (and ``-adaptive`` with ``adaptive``)."""
    on_cluster: bool = field(default=False, metadata=RUN_ONLY)
    """Run the evaluation in one Ray actor holding both LMs (sized by ``num_cpus``/``num_gpus``,
    on the large LM's ``ray_resource`` group) instead of the calling process. Needed on a GPU
    cluster, whose job drivers run on a CPU-only head; off, ``lmcot eval`` needs no cluster."""
    num_cpus: float = field(default=1.0, metadata=RUN_ONLY)
    """CPUs of the evaluation actor (``on_cluster`` only)."""
    num_gpus: float = field(default=0.0, metadata=RUN_ONLY)
    """GPUs of the evaluation actor (``on_cluster`` only): 1 for the large LM and the small LM on one GPU."""
    start_timeout_s: float = field(default=1800.0, metadata=RUN_ONLY)
    """How long to wait for the evaluation actor to be placed and started (``on_cluster`` only):
    long enough for an autoscaler to add a GPU node, short of waiting forever on a resource
    no node offers."""

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {', '.join(METHODS)}")
        if self.self_consistency < 1:
            raise ValueError("self_consistency must be >= 1")
        if self.self_consistency > 1 and self.method in ("gold_rationale", "empty_rationale"):
            raise ValueError(f"method={self.method} has one fixed rationale: set self_consistency to 1")
        if self.adaptive_round_size < 2:
            raise ValueError(f"adaptive_round_size must be >= 2 (a single sample is greedy), got {self.adaptive_round_size}")
        if self.limit < 0:
            raise ValueError("limit must be >= 0 (0 means all)")
        if self.judge_limit < 0:
            raise ValueError("judge_limit must be >= 0 (0 means all)")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("num_cpus and num_gpus must be >= 0")
        if self.start_timeout_s <= 0:
            raise ValueError("start_timeout_s must be > 0")

    @property
    def output_label(self) -> str:
        if self.label:
            return self.label
        if self.self_consistency == 1:
            return self.method
        return f"{self.method}-sc{self.self_consistency}" + ("-adaptive" if self.adaptive else "")
