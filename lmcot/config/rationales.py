"""Teacher rationale generation (the large LM writes rationales for the training set)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmcot.config.loader import RUN_ONLY

FILTERS = ("em", "f1")


@dataclass(frozen=True)
class RationalesConfig:
    """How the teacher's rationales are drawn, filtered and sharded over Ray Data actors."""

    samples_per_question: int = 1
    """Rationales drawn per training question (sampled at ``generation.temperature`` when > 1)."""
    filter: str = "em"
    """Keep a rationale when the teacher's answer from it is right: ``em`` or ``f1`` >= ``f1_threshold``."""
    require_faithful: bool = False
    """Also drop a rationale that names someone or something (or a number) its context never states
    (:mod:`lmcot.training.faithfulness`), even when its answer is right: a lucky answer from an
    invented name teaches the small LM to invent names. Reason ``unfaithful`` in the summary."""
    judged_answer: str = "teacher"
    """Which answer the filter scores: ``teacher`` (the answer the teacher's own CoT ends with) or
    ``from_rationale`` (the large LM answers again from the rationale alone with the
    answer-from-rationale prompt, as at LM-guided inference; one more greedy call per rationale)."""
    f1_threshold: float = 0.5
    """With ``filter: f1``: the least token F1 of the teacher's answer for a rationale to be kept.
    0 keeps every rationale, even one stating no answer (plumbing runs with a random teacher);
    otherwise a rationale with no parsable answer is never kept."""
    num_actors: int = field(default=2, metadata=RUN_ONLY)
    """Teacher generator actors in the Ray Data pool."""
    cpus_per_actor: float = field(default=1.0, metadata=RUN_ONLY)
    """CPUs reserved by each actor (Ray also caps the actor's torch threads to this)."""
    gpus_per_actor: float = field(default=0.0, metadata=RUN_ONLY)
    """GPUs per actor: 1 for a teacher on its own GPU; a fraction packs several actors on one GPU."""
    batch_size: int = 8
    """Questions handed to one actor call (each yields ``samples_per_question`` rows)."""
    shard_rows: int = field(default=512, metadata=RUN_ONLY)
    """Rows per parquet shard in ``RUN/rationales/``: a killed run loses at most the rows of one
    unfinished shard, which a rerun regenerates."""
    max_restarts: int = field(default=-1, metadata=RUN_ONLY)
    """How often Ray restarts a dead teacher actor and retries its batches before the run fails.
    -1 keeps Ray Data's default: restart and retry without limit. A failed run resumes on rerun."""

    def __post_init__(self):
        if self.samples_per_question < 1:
            raise ValueError("samples_per_question must be >= 1")
        if self.judged_answer not in ("teacher", "from_rationale"):
            raise ValueError(f"judged_answer={self.judged_answer!r} is not one of teacher, from_rationale")
        if self.filter not in FILTERS:
            raise ValueError(f"filter={self.filter!r} is not one of {', '.join(FILTERS)}")
        if not 0 <= self.f1_threshold <= 1:
            raise ValueError("f1_threshold must be in [0, 1]")
        if self.num_actors < 1 or self.batch_size < 1:
            raise ValueError("num_actors and batch_size must be >= 1")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise ValueError("cpus_per_actor and gpus_per_actor must be >= 0")
        if self.shard_rows < 1:
            raise ValueError("shard_rows must be >= 1")
        if self.max_restarts < -1:
            raise ValueError("max_restarts must be >= -1 (-1: restart without limit)")
