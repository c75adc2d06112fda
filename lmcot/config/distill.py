"""Rationale distillation: fine-tune the small LM on the teacher's kept rationales."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmcot.config.training import ScalingConfig


@dataclass(frozen=True)
class DistillConfig:
    """Supervised fine-tuning of the small LM on kept rationales."""

    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    epochs: float = 1.0
    learning_rate: float = 5e-4
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_source_tokens: int = 512
    max_target_tokens: int = 128
    eval_fraction: float = 0.1
    """Share of kept rationales held out for validation loss."""
    save_steps: int = 50
    """Checkpoint every N optimizer steps."""
    eval_steps: int = 50
    logging_steps: int = 5
    max_steps: int = 0
    """Stop after N optimizer steps (0: run the epochs)."""

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if self.per_device_batch_size < 1:
            raise ValueError("per_device_batch_size must be >= 1")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in [0, 1)")
