"""Which datasets a run trains and evaluates on, and how contexts are built."""

from __future__ import annotations

from dataclasses import dataclass, field

FORMATS = ("hotpotqa", "2wiki")
CONTEXT_MODES = ("all", "shuffled", "ranked", "gold_first", "gold")


@dataclass(frozen=True)
class DatasetSpec:
    """One multi-hop QA dataset, from official JSON files or the Hugging Face hub."""

    name: str = "hotpotqa"
    """Label used in reports and run-directory names."""
    format: str = "hotpotqa"
    """Record schema: ``hotpotqa`` (official HotpotQA) or ``2wiki`` (official 2WikiMultiHopQA)."""
    train_path: str = ""
    """Official-format JSON for training; ``sample:<name>`` names a shipped synthetic file.
    Empty: read ``hub_id`` instead."""
    dev_path: str = ""
    """Official-format JSON for evaluation (same rules as ``train_path``)."""
    hub_id: str = ""
    """Hub dataset id, used when the path is empty (e.g. ``hotpotqa/hotpot_qa``)."""
    hub_config: str = ""
    """Hub config name (``distractor`` for HotpotQA)."""
    train_split: str = "train"
    dev_split: str = "validation"
    limit: int = 0
    """Use the first N examples of each split (0: all)."""
    aliases_path: str = ""
    """2Wiki ``id_aliases.json`` for alias-aware scoring (optional)."""

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format={self.format!r} is not one of {', '.join(FORMATS)}")
        if not (self.train_path or self.dev_path or self.hub_id):
            raise ValueError(f"dataset {self.name!r} needs train_path/dev_path or hub_id")
        if self.limit < 0:
            raise ValueError("limit must be >= 0 (0 means all)")


@dataclass(frozen=True)
class DataConfig:
    """The datasets of a run and the context given to the models."""

    datasets: tuple[DatasetSpec, ...] = field(
        default_factory=lambda: (
            DatasetSpec(
                name="hotpotqa",
                train_path="sample:hotpotqa_synthetic_train",
                dev_path="sample:hotpotqa_synthetic_dev",
            ),
        )
    )
    """Training uses every dataset's train split; evaluation reports each dataset separately."""
    context_mode: str = "all"
    """``all`` paragraphs in the dataset's order (the distractor setting), ``shuffled`` (seeded by the
    question id), ``ranked`` (by relevance to the question, following title links: a cut drops the
    least related paragraphs; reads only the question), or the oracle settings that read the gold
    labels: ``gold_first`` (gold paragraphs first, so a cut drops distractors) and ``gold`` (gold
    paragraphs only). Reports mark oracle runs."""
    context_max_tokens: int = 0
    """Optional cost cap on the context alone, in the large LM's tokens; 0: none. Every model still
    fits each whole prompt to its own input limit (``max_input_tokens``) by shortening the context."""

    def __post_init__(self):
        if not self.datasets:
            raise ValueError("datasets is empty: list at least one dataset")
        if self.context_mode not in CONTEXT_MODES:
            raise ValueError(f"context_mode={self.context_mode!r} is not one of {', '.join(CONTEXT_MODES)}")
        if self.context_max_tokens < 0:
            raise ValueError("context_max_tokens must be >= 0")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
