"""Decoding settings shared by every role and stage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationConfig:
    """How rationales and answers are decoded."""

    batch_size: int = 8
    """Prompts per generate call (prompts are grouped by length first)."""
    rationale_max_new_tokens: int = 96
    """Length cap for a rationale (small LM, teacher and CoT reasoning)."""
    answer_max_new_tokens: int = 16
    """Length cap for a final answer."""
    temperature: float = 0.7
    """Sampling temperature used whenever more than one sample is drawn (self-consistency)."""
    top_p: float = 0.95
    """Nucleus sampling mass when sampling."""
    seed: int = 0
    """Seed for sampling, so a rerun draws the same rationales."""

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.rationale_max_new_tokens < 1 or self.answer_max_new_tokens < 1:
            raise ValueError("max_new_tokens values must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
