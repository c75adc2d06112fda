"""The end-to-end pipeline: which stages run and which evaluations the report holds."""

from __future__ import annotations

from dataclasses import dataclass


REPORT_ROWS = (("standard", "standard", None), ("cot", "cot", None),
               ("lm_guided-distilled", "lm_guided", "distill"), ("lm_guided-refined", "lm_guided", "refine"))
"""(label, method, training stage of the small LM) of the report's method rows."""
ROW_LABELS = tuple(label for label, *_ in REPORT_ROWS)


@dataclass(frozen=True)
class PipelineConfig:
    """``lmcot run``: rationales -> distill -> (search) -> refine -> evaluations -> report."""

    self_consistency: int = 5
    """k of the self-consistency rows of the report (each method is also run with k = 1)."""
    judge_rationales: bool = True
    """Score the rationales each model writes on the eight aspects (large-LM judge) for the report."""
    self_consistency_rows: tuple[str, ...] = ("standard", "cot", "lm_guided-distilled", "lm_guided-refined")
    """Rows also evaluated with self-consistency at k = ``self_consistency`` (each k-sample row costs
    about k single rows). The Claims table needs ``lm_guided-refined``."""
    reference_rows: bool = True
    """Add the reference rows ``gold-rationale`` (the large LM answering from the gold supporting facts:
    an oracle upper bound) and ``empty-rationale`` (answering from nothing: the floor), each at k = 1.
    There is no row for the small LM before distillation: an untrained small LM writes no rationale
    (the tiny one wrote "" or two words on all 80 shipped questions), so it only repeated the empty row."""

    training_seeds: tuple[int, ...] = (0, 1, 2)
    """``lmcot seeds``: the training seeds distillation, refinement and the evaluations are rerun with, on
    the run's one set of teacher rationales (the run's own ``seed`` is one of them when listed). A claim
    holds for the recipe only if it holds on every seed: one seed can flip a verdict."""

    report_note: str = ""
    """One line the report prints under its title: what the run's data and models are evidence of
    (the ``tiny_world`` preset says what a toy world does and does not show)."""

    def __post_init__(self):
        if not self.training_seeds or len(set(self.training_seeds)) != len(self.training_seeds) \
                or any(not isinstance(s, int) or s < 0 for s in self.training_seeds):
            raise ValueError(f"pipeline.training_seeds must be distinct non-negative integers, got "
                             f"{list(self.training_seeds)}; e.g. pipeline.training_seeds=[0,1,2]")
        if self.self_consistency < 2:
            raise ValueError("self_consistency must be >= 2 (k = 1 rows are always run)")
        unknown = [r for r in self.self_consistency_rows if r not in ROW_LABELS]
        if unknown:
            raise ValueError(f"self_consistency_rows names unknown rows {unknown}; valid: {', '.join(ROW_LABELS)}")
