"""Rationale distillation: fine-tune the small LM on the teacher's kept rationales."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmcot.config.training import ScalingConfig


@dataclass(frozen=True)
class DistillConfig:
    """Supervised fine-tuning of the small LM on kept rationales (Ray Train + DeepSpeed)."""

    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    epochs: float = 1.0
    """Passes over the training pairs (ignored when ``max_steps`` > 0)."""
    learning_rate: float = 5e-4
    per_device_batch_size: int = 4
    """Pairs per worker per micro-step (the global batch is this x workers x accumulation)."""
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 0
    """Linear learning-rate warm-up, in optimizer steps."""
    max_source_tokens: int = 512
    """The most prompt tokens a pair may have. Prompts are fitted to the small LM's input limit as
    at inference (only the context is shortened); a longer one fails instead of being cut, so set
    this at or above that limit (``lmcot plan`` checks it)."""
    max_target_tokens: int = 128
    """Rationale tokens trained per pair (longer rationales are cut)."""
    group_by_length: bool = False
    """Batch pairs of similar prompt length (HF ``LengthGroupedSampler``): real contexts vary 3x in
    length, so this cuts padding; the GPU presets turn it on."""
    eval_fraction: float = 0.1
    """Share of questions held out for validation loss (all samples of a question stay together)."""
    save_steps: int = 50
    """Checkpoint every N optimizer steps (and at the end)."""
    eval_steps: int = 50
    """Validation loss and sampled rationales every N optimizer steps (and at the end)."""
    logging_steps: int = 5
    """Training loss printed every N optimizer steps."""
    max_steps: int = 0
    """Stop after N optimizer steps (0: run the epochs)."""
    sample_rationales: int = 3
    """Validation prompts whose greedy rationale is logged at each evaluation (0: none)."""
    limit: int = 0
    """Use at most N kept rationales (0: all); for smoke runs."""

    def __post_init__(self):
        if self.epochs <= 0:
            raise ValueError("epochs must be > 0")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if self.per_device_batch_size < 1:
            raise ValueError("per_device_batch_size must be >= 1")
        if self.gradient_accumulation_steps < 1:
            raise ValueError("gradient_accumulation_steps must be >= 1")
        if self.warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0")
        if self.max_source_tokens < 8 or self.max_target_tokens < 2:
            raise ValueError("max_source_tokens must be >= 8 and max_target_tokens >= 2")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in [0, 1)")
        for name in ("save_steps", "eval_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_steps < 0:
            raise ValueError("max_steps must be >= 0 (0: run the epochs)")
        if self.sample_rationales < 0 or self.limit < 0:
            raise ValueError("sample_rationales and limit must be >= 0")
