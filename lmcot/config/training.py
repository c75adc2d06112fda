"""Settings shared by the two training stages (distillation and refinement)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmcot.config.loader import RUN_ONLY


@dataclass(frozen=True)
class ScalingConfig:
    """How one training stage runs on the cluster: Ray Train workers, DeepSpeed, precision, recovery."""

    num_workers: int = 2
    """Ray Train workers (data-parallel ranks)."""
    use_gpu: bool = False
    """One GPU per worker (bf16 needs this); CPU workers use gloo."""
    cpus_per_worker: float = field(default=1.0, metadata=RUN_ONLY)
    """CPUs reserved per worker (also its torch thread count on CPU)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage (0-3): 2 shards optimizer state and gradients, 3 also the weights."""
    bf16: bool = False
    """bf16 mixed precision (meant for GPUs; on CPU it is slow but allowed)."""
    torch_compile: bool = False
    """``torch.compile`` the model in the HF trainer (GPUs: fuses T5's element-wise work; slow first steps)."""
    gradient_checkpointing: bool = field(default=False, metadata=RUN_ONLY)
    """Recompute activations in the backward pass instead of keeping them: the same result with
    far less activation memory (FLAN-T5-Large at 1536 source tokens, micro-batch 16: 15.7 GB
    instead of running out of 141 GB) for about a third more compute."""
    max_failures: int = field(default=3, metadata=RUN_ONLY)
    """Worker failures a run recovers from, each time resuming from the last checkpoint (-1: no limit)."""
    checkpoints_to_keep: int = field(default=2, metadata=RUN_ONLY)
    """Ray Train checkpoints kept in storage (the oldest is deleted first)."""

    def __post_init__(self):
        if self.num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if self.cpus_per_worker <= 0:
            raise ValueError("cpus_per_worker must be > 0")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage={self.zero_stage} must be 0, 1, 2 or 3")
        if self.max_failures < -1:
            raise ValueError("max_failures must be >= -1 (-1: retry without limit)")
        if self.checkpoints_to_keep < 1:
            raise ValueError("checkpoints_to_keep must be >= 1 (the last checkpoint is what a restart resumes from)")
