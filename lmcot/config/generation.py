"""Decoding settings shared by every role and stage."""

from __future__ import annotations

from dataclasses import dataclass

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention")
"""Attention kernels transformers offers for T5 and Qwen2 (``attn_implementation``)."""

ENGINES = ("static", "continuous")
"""How the HF backend batches free generation (``engine``)."""


@dataclass(frozen=True)
class GenerationConfig:
    """How rationales and answers are decoded."""

    batch_size: int = 8
    """Rows (prompts x samples) per generate call and prompts per judging call; prompts are grouped
    by length first, and one prompt's samples are never split (a prompt with more samples than this
    runs alone)."""
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
    sc_include_greedy: bool = False
    """Self-consistency of LM-guided CoT: the greedy rationale is one of the k (plus k - 1 sampled),
    so a vote starts from the single-rationale answer and sampling can only add to it."""
    max_batch_tokens: int = 0
    """Token budget of one batch: rows x (padded prompt tokens + new tokens) stays under it, so short
    prompts fill a batch with more rows than long ones (up to ``batch_size``); a prompt whose samples
    alone exceed it runs alone. 0: no budget, ``batch_size`` rows only."""
    static_cache: bool = False
    """HF backend: decode with a static KV cache (transformers' ``cache_implementation="static"``) and
    pad prompts up to bucket lengths (``length_buckets``) and a batch's prompts up to a power of two,
    so shapes repeat across calls. Padding is masked: greedy text and P(yes) stay those of the eager
    path. Off by default (no gain on CPU); the GPU presets turn it on."""
    compile: bool = False
    """HF backend: ``torch.compile`` the decoding step (transformers' compiled static-cache decoding:
    CUDA graphs on a GPU), a seq2seq model's encoder and a causal judge's forward pass, once per
    shape bucket and reused across calls. Needs ``static_cache``. The first call of each bucket
    compiles (about a minute for FLAN-T5-XXL on an H200). Off by default (slow to compile on CPU);
    the GPU presets (``configs/paper.yaml``, ``configs/qwen.yaml``) turn it on."""
    length_buckets: tuple[int, ...] = ()
    """Prompt lengths (tokens) the static-cache path pads up to, ascending; a prompt longer than the
    last bucket is padded to a multiple of ``bucket_step``. Empty: powers of two from
    ``bucket_step`` (64, 128, 256, ...). Fewer buckets: fewer compiles, more padding."""
    bucket_step: int = 64
    """Smallest bucket and the multiple prompts beyond the last bucket are padded to."""
    attn_implementation: str = "sdpa"
    """Attention kernel of HF-loaded generation models: ``sdpa`` (transformers' default), ``eager`` or
    ``flex_attention``. T5's relative-position bias is an additive mask, which keeps SDPA off its
    fastest kernels; compile fuses around it (docs/benchmarks.md)."""
    engine: str = "static"
    """HF backend, free generation: ``static`` batches prompts up to ``batch_size`` rows and runs each
    batch with ``model.generate`` until its longest row ends (the static cache and ``compile`` apply
    here); ``continuous`` (:mod:`lmcot.models.continuous`) schedules at every decoding step: a row that
    ends frees its slot at once and a waiting prompt takes it at the next step, ``batch_size`` rows at
    most (and ``max_batch_tokens``). Greedy text is the same with either; sampled text is drawn from
    per-row seeds, so it differs from the static engine's. Pick ``continuous`` where output lengths
    vary (rationales, self-consistency samples) and for many concurrent requests; ``static`` for
    compiled static-cache decoding on a GPU, which the continuous engine does not do (it decodes
    eagerly; yes/no scoring runs on the static path either way, log-probabilities on the engine)."""

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.rationale_max_new_tokens < 1 or self.answer_max_new_tokens < 1:
            raise ValueError("max_new_tokens values must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_batch_tokens < 0:
            raise ValueError("max_batch_tokens must be >= 0 (0: no token budget)")
        if self.compile and not self.static_cache:
            raise ValueError("compile needs static_cache: true (compiled decoding runs on a static KV cache)")
        if self.bucket_step < 1:
            raise ValueError("bucket_step must be >= 1")
        if any(b < 1 for b in self.length_buckets) or list(self.length_buckets) != sorted(set(self.length_buckets)):
            raise ValueError(f"length_buckets must be positive and strictly ascending, got {list(self.length_buckets)}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, "
                             f"got {self.attn_implementation!r}")
