"""Settings shared by the two training stages (distillation and refinement)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScalingConfig:
    """Ray Train workers and DeepSpeed for one training stage."""

    num_workers: int = 2
    """Ray Train workers (data-parallel ranks)."""
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    zero_stage: int = 2
    """DeepSpeed ZeRO stage (0-3)."""
    bf16: bool = False
    """bf16 mixed precision (GPUs)."""

    def __post_init__(self):
        if self.num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage={self.zero_stage} must be 0, 1, 2 or 3")
