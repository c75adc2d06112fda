"""What ``lmcot eval`` measures."""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("standard", "cot", "lm_guided")


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: a method, optionally with self-consistency."""

    method: str = "lm_guided"
    """``standard`` (large LM answers directly), ``cot`` (large LM reasons then answers) or
    ``lm_guided`` (small LM writes the rationale, large LM answers from it)."""
    self_consistency: int = 1
    """Rationales sampled per question and majority-voted (1: one greedy rationale)."""
    limit: int = 0
    """Evaluate the first N dev examples of each dataset (0: all)."""
    label: str = ""
    """Name of the output folder ``RUN/eval/<label>/``; empty: the method name plus ``-sc<K>`` when K > 1."""

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {', '.join(METHODS)}")
        if self.self_consistency < 1:
            raise ValueError("self_consistency must be >= 1")
        if self.limit < 0:
            raise ValueError("limit must be >= 0 (0 means all)")

    @property
    def output_label(self) -> str:
        if self.label:
            return self.label
        return self.method + (f"-sc{self.self_consistency}" if self.self_consistency > 1 else "")
