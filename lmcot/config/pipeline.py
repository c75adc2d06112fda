"""The end-to-end pipeline: which stages run and which evaluations the report holds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PipelineConfig:
    """``lmcot run``: rationales -> distill -> (search) -> refine -> evaluations -> report."""

    self_consistency: int = 5
    """k of the self-consistency rows of the report (each method is also run with k = 1)."""
    judge_rationales: bool = True
    """Score the rationales each model writes on the eight aspects (large-LM judge) for the report."""
    reference_rows: bool = True
    """Add the reference rows ``lm_guided-undistilled`` (the small LM before training),
    ``gold-rationale`` (the large LM answering from the gold supporting facts: an oracle upper
    bound) and ``empty-rationale`` (answering from nothing: the floor), each at k = 1."""

    report_note: str = ""
    """One line the report prints under its title: what the run's data and models are evidence of
    (the ``tiny_world`` preset says what a toy world does and does not show)."""

    def __post_init__(self):
        if self.self_consistency < 2:
            raise ValueError("self_consistency must be >= 2 (k = 1 rows are always run)")
