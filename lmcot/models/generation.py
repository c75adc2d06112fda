"""The generation Protocol every role uses, and its Hugging Face implementation.

A generator does two things: write text (k samples per prompt in one call) and score
a yes/no question by P("yes") from next-token logits, which is how the large LM
judges rationale quality without generating. Every call reports its token counts, so
the cost of each method (large-LM calls and tokens per question) is measured, not
estimated. Prompts are fitted to the model's input limit first (:mod:`lmcot.prompting.fitting`);
the prompt tokens reported are those of the fitted prompt the model received.

Throughput (``docs/design.md`` "Generation throughput"): a batch is counted in
rows (prompts x samples) under :attr:`GenerationConfig.batch_size` and a token budget
(``max_batch_tokens``), never splitting one prompt's samples. With ``static_cache`` the
prompts are padded up to a few bucket lengths (and the prompts of a batch up to a power
of two), so a static KV cache and ``compile`` (transformers' compiled decoding, a compiled
encoder / judge forward) see a bounded set of shapes, each compiled once and reused across
calls. Padding is masked: greedy text and P(yes) equal the eager path's (tested on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from lmcot.config import GenerationConfig, ModelSpec
from lmcot.prompting.fitting import FittedPrompt, PromptFitter


@dataclass(frozen=True)
class Generation:
    """The samples drawn for one prompt, with what they cost."""

    texts: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Usage:
    """Calls (one per prompt sent) and tokens spent by one model."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, g: Generation | "Usage") -> "Usage":
        if isinstance(g, Usage):
            self.calls += g.calls
            self.prompt_tokens += g.prompt_tokens
            self.completion_tokens += g.completion_tokens
        else:
            self.calls += 1
            self.prompt_tokens += g.prompt_tokens
            self.completion_tokens += g.completion_tokens
        return self

    def as_dict(self) -> dict:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


class Generator(Protocol):
    """What lmcot needs from a language model, whatever serves it."""

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Generation]:
        """``n`` completions per prompt; greedy when ``temperature == 0`` (then n must be 1)."""
        ...

    def score_yes_no(self, prompts: Sequence[str]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) of the next token after each prompt."""
        ...


def bucket_length(length: int, buckets: Sequence[int] = (), step: int = 64) -> int:
    """The padded length of a prompt of ``length`` tokens: the smallest bucket that holds it.

    Without explicit ``buckets``, powers of two from ``step`` up; beyond the last bucket, the
    next multiple of ``step`` (a prompt is never cut).

    >>> [bucket_length(n) for n in (1, 64, 65, 300, 1000)]
    [64, 64, 128, 512, 1024]
    >>> bucket_length(300, (256, 512, 768)), bucket_length(800, (256, 512, 768))
    (512, 832)
    """
    if buckets:
        fitting = [b for b in buckets if b >= length]
        return min(fitting) if fitting else -(-length // step) * step
    size = step
    while size < length:
        size *= 2
    return size


def row_batches(
    lengths: Sequence[int], *, n: int = 1, max_rows: int, max_tokens: int = 0, new_tokens: int = 0,
    padded: Callable[[int], int] = lambda length: length,
) -> list[list[int]]:
    """Prompt indices grouped by length into batches of whole prompts (``n`` rows each).

    A batch holds at most ``max_rows`` rows (prompts x samples) and, when ``max_tokens`` is
    set, rows x (``padded`` longest prompt + ``new_tokens``) <= ``max_tokens``; a prompt whose
    own ``n`` rows exceed either runs alone. Prompts are taken shortest first, so padding is small.

    >>> row_batches([5, 1, 4, 2], max_rows=2)
    [[1, 3], [2, 0]]
    >>> row_batches([5, 1, 4, 2], n=3, max_rows=8)
    [[1, 3], [2, 0]]
    >>> row_batches([10, 10, 30, 30], max_rows=99, max_tokens=60, new_tokens=10)
    [[0, 1], [2], [3]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        rows = (len(current) + 1) * n
        tokens = rows * (padded(lengths[i]) + new_tokens)  # sorted: prompt i is the longest so far
        if current and (rows > max_rows or (max_tokens and tokens > max_tokens)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class Scored:
    """One sampled completion with its tokens' log-probabilities (OpenAI ``logprobs``)."""

    text: str
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    completion_tokens: int
    ended: bool
    """True when the model ended the text itself (end of sequence) rather than at ``max_new_tokens``."""


class TokenNames:
    """Each vocabulary id's text, decoded once, and the special ids (padding, end of sequence...);
    turns a completion's token ids and log-probabilities into a :class:`Scored`, as the OpenAI API
    lists them (the static path and the continuous engine share it)."""

    def __init__(self, tokenizer):
        size = len(tokenizer)
        self.tokenizer = tokenizer
        self.names = tokenizer.batch_decode([[i] for i in range(size)])
        self.special = sorted({i for i in tokenizer.all_special_ids if i is not None and 0 <= i < size})

    def top(self, logp: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``top`` likeliest ordinary tokens of each distribution in ``logp`` ([..., vocab]
        log-probabilities): their log-probabilities and ids, special tokens and ids past the
        tokenizer's vocabulary (padding rows of the embedding) left out."""
        ordinary = logp.clone()
        ordinary[..., self.special] = float("-inf")
        ordinary[..., len(self.names):] = float("-inf")
        top = min(top, len(self.names) - len(self.special))
        values, ids = ordinary.topk(max(top, 1), dim=-1)
        return values[..., :top], ids[..., :top]

    def scored(self, ids: list[int], length: int, token_logprobs: list[float], top_ids: list[list[int]],
               top_logprobs: list[list[float]], ended: bool) -> Scored:
        """One completion: its first ``length`` generated ``ids``, each one's log-probability and the
        ids and log-probabilities of its likeliest alternatives (per position). Special tokens (end of
        sequence, padding) are left out of both the tokens and the alternatives; two ids that spell
        the same text are one alternative (their probabilities added)."""
        special = set(self.special)
        listed = [t for t in range(length) if ids[t] not in special]
        alternatives = []
        for t in listed:
            merged: dict[str, float] = {}
            for i, lp in zip(top_ids[t], top_logprobs[t]):
                name = self.names[i]
                merged[name] = _logaddexp(merged[name], lp) if name in merged else lp
            alternatives.append(merged)
        return Scored(text=self.tokenizer.decode(ids[:length], skip_special_tokens=True).strip(),
                      tokens=[self.names[ids[t]] for t in listed],
                      token_logprobs=[token_logprobs[t] for t in listed],
                      top_logprobs=alternatives, completion_tokens=length, ended=ended)


def _logaddexp(a: float, b: float) -> float:
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


class HFGenerator:
    """A transformers model behind the :class:`Generator` Protocol (CPU or one GPU).

    ``batch_size`` (rows per call) defaults to ``config.batch_size``; the other throughput
    settings (token budget, static cache, buckets, compile) come from ``config``.
    """

    def __init__(self, spec: ModelSpec, batch_size: int | None = None, loaded=None,
                 config: GenerationConfig | None = None):
        from lmcot.models.loading import load_model

        self.spec = spec
        self.config = config or GenerationConfig()
        self.batch_size = batch_size or self.config.batch_size
        lm = loaded if loaded is not None else load_model(spec, attn_implementation=self.config.attn_implementation)
        self.model, self.tokenizer, self.family, self.device = lm.model, lm.tokenizer, lm.family, lm.device
        self.fitter = PromptFitter.for_model(spec, self.tokenizer, self.family, self.model.config)
        self._yes_ids, self._no_ids = self._answer_token_ids()
        self._token_names: TokenNames | None = None  # decoded on the first logprobs call
        self._compiled: dict[str, Callable] = {}

    # -- prompt handling ------------------------------------------------------------
    def fit(self, prompts: Sequence[str], reserve: int = 0) -> list[FittedPrompt]:
        """Each prompt as this model receives it (chat template, fitted to its input limit)."""
        return self.fitter.fit_all(prompts, reserve)

    def _encode(self, texts: list[str], length: int | None = None):
        # Never truncate here: every text was fitted to the model's limit already. ``length`` pads
        # (on the family's padding side) to a bucket length for the static-cache path.
        pad = dict(padding="max_length", max_length=length) if length else dict(padding=True)
        enc = self.tokenizer(texts, truncation=False, return_tensors="pt", **pad)
        return {k: v.to(self.device) for k, v in enc.items()}

    def encode_prompts(self, prompts: Sequence[str], reserve: int = 0) -> dict:
        """One padded batch of prompts on the model's device, fitted and formatted as ``generate``
        does (for callers that run ``model.generate`` themselves, e.g. to read log-probabilities)."""
        return self._encode([f.text for f in self.fit(prompts, reserve)])

    def _count_completion(self, ids: torch.Tensor) -> int:
        """Tokens generated up to and including the first end-of-sequence token (padding excluded)."""
        row = ids.tolist()
        eos = self.tokenizer.eos_token_id
        return row.index(eos) + 1 if eos in row else len(row)

    # -- batching and shapes --------------------------------------------------------
    def _padded(self, length: int) -> int:
        """The length a prompt is padded to: its bucket on the static-cache path, else itself."""
        c = self.config
        return bucket_length(length, c.length_buckets, c.bucket_step) if c.static_cache else length

    def _batches(self, lengths: list[int], n: int, new_tokens: int) -> list[list[int]]:
        return row_batches(lengths, n=n, max_rows=self.batch_size, max_tokens=self.config.max_batch_tokens,
                           new_tokens=new_tokens, padded=self._padded)

    def _batch_inputs(self, texts: list[str], lengths: list[int], batch: list[int], n: int = 1,
                      new_tokens: int = 0) -> tuple[dict, int]:
        """The encoded batch and its number of real prompts. On the static-cache path the prompts
        are padded to the bucket of the longest, and the batch to a power of two of prompts (or to
        the most prompts the row and token limits allow at that bucket, if fewer) by repeating its
        last prompt (results of the repeats are dropped), so shapes repeat across calls."""
        chosen = [texts[i] for i in batch]
        if not self.config.static_cache:
            return self._encode(chosen), len(batch)
        length = self._padded(max(lengths[i] for i in batch))
        cap = self.batch_size // n
        if self.config.max_batch_tokens:
            cap = min(cap, self.config.max_batch_tokens // (n * (length + new_tokens)))
        prompts = 1
        while prompts < len(batch):
            prompts *= 2
        prompts = max(len(batch), min(prompts, cap))
        chosen += [chosen[-1]] * (prompts - len(batch))
        return self._encode(chosen, length), len(batch)

    def _compile(self, name: str, fn: Callable) -> Callable:
        """``fn`` compiled once (static shapes: one graph per bucket, reused across calls)."""
        if name not in self._compiled:
            import torch._dynamo.config as dynamo_config

            # one graph per (length bucket, row bucket) pair: allow more than torch's default 8
            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
            self._compiled[name] = torch.compile(fn, dynamic=False)
        return self._compiled[name]

    def _encoder_outputs(self, enc: dict):
        """A seq2seq model's encoder pass (compiled when ``config.compile``)."""
        encoder = self.model.get_encoder()
        if self.config.compile:
            encoder = self._compile("encoder", encoder)
        return encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], return_dict=True)

    def _generate_kwargs(self) -> dict:
        """Static KV cache and transformers' compiled decoding (CUDA graphs on a GPU), or neither."""
        if not self.config.static_cache:
            return {}
        if not self.config.compile:
            return dict(cache_implementation="static", disable_compile=True)
        from transformers import CompileConfig

        compile_config = CompileConfig()
        compile_config._compile_all_devices = True  # honour compile: true on CPU too (tests, smoke runs)
        return dict(cache_implementation="static", compile_config=compile_config)

    # -- Generator Protocol ---------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts, *, max_new_tokens, n=1, temperature=0.0, top_p=1.0, seed=None):
        if n > 1 and temperature <= 0:
            raise ValueError("n > 1 samples need temperature > 0 (greedy decoding gives one answer)")
        fitted = self.fit(prompts, reserve=max_new_tokens)
        texts, lengths = [f.text for f in fitted], [f.tokens for f in fitted]
        results: list[Generation | None] = [None] * len(texts)
        if seed is not None:
            torch.manual_seed(seed)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
        for batch in self._batches(lengths, n, max_new_tokens):
            enc, real = self._batch_inputs(texts, lengths, batch, n, max_new_tokens)
            inputs = dict(enc)
            if self.family == "seq2seq" and self.config.compile:
                inputs = dict(encoder_outputs=self._encoder_outputs(enc), attention_mask=enc["attention_mask"])
            out = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, num_return_sequences=n,
                pad_token_id=self.tokenizer.pad_token_id, **sampling, **self._generate_kwargs(),
            )
            if self.family == "causal":
                out = out[:, enc["input_ids"].shape[1]:]
            else:
                out = out[:, 1:]  # drop the decoder start token
            out = out[: real * n]  # rows of the repeated padding prompts are dropped
            decoded = self.tokenizer.batch_decode(out, skip_special_tokens=True)
            for j, i in enumerate(batch):
                rows = range(j * n, (j + 1) * n)
                results[i] = Generation(
                    texts=tuple(decoded[r].strip() for r in rows),
                    prompt_tokens=lengths[i],
                    completion_tokens=sum(self._count_completion(out[r]) for r in rows),
                )
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def score_yes_no(self, prompts):
        fitted = self.fit(prompts, reserve=1)
        texts, lengths = [f.text for f in fitted], [f.tokens for f in fitted]
        scores = [0.0] * len(texts)
        for batch in self._batches(lengths, 1, 1):
            enc, real = self._batch_inputs(texts, lengths, batch, 1, 1)
            if self.family == "seq2seq":
                start = self.model.generation_config.decoder_start_token_id
                if start is None:
                    start = self.model.config.decoder_start_token_id
                dec = torch.full((enc["input_ids"].shape[0], 1), start, dtype=torch.long, device=self.device)
                encoded = self._encoder_outputs(enc)
                logits = self.model(encoder_outputs=encoded, attention_mask=enc["attention_mask"],
                                    decoder_input_ids=dec, use_cache=False).logits[:, -1]
            else:
                forward = self._compile("forward", self.model) if self.config.compile else self.model
                logits = forward(**enc, use_cache=False).logits[:, -1]
            logits = logits[:real].float()
            yes = torch.logsumexp(logits[:, self._yes_ids], dim=-1)
            no = torch.logsumexp(logits[:, self._no_ids], dim=-1)
            for j, i in enumerate(batch):
                scores[i] = torch.sigmoid(yes[j] - no[j]).item()
        return scores

    @torch.inference_mode()
    def generate_with_logprobs(self, prompts: Sequence[str], *, max_new_tokens: int, n: int = 1,
                               temperature: float = 0.0, top_p: float = 1.0, top: int = 5) -> tuple[list[Scored], int]:
        """Completions with each token's log-probability and its ``top`` likeliest alternatives.

        Log-probabilities are the model's own next-token distribution (before temperature and
        ``suppress_tokens``), which is what a yes/no judge reads. Special tokens (end of
        sequence, padding) are left out of both the tokens and the alternatives, as the OpenAI
        API lists them. Returns one :class:`Scored` per sample (prompt-major) and the prompt
        tokens of the fitted prompts.
        """
        if self._token_names is None:
            self._token_names = TokenNames(self.tokenizer)
        names, tok = self._token_names, self.tokenizer
        enc = self.encode_prompts(prompts, reserve=max_new_tokens)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
        out = self.model.generate(
            **enc, max_new_tokens=max_new_tokens, num_return_sequences=n, pad_token_id=tok.pad_token_id,
            output_logits=True, return_dict_in_generate=True, **sampling,
        )
        steps = len(out.logits)
        seqs = out.sequences[:, -steps:]  # the generated tokens, for both families
        logp = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
        chosen = logp.gather(-1, seqs[..., None]).squeeze(-1).tolist()
        top_lp, top_ids = (t.tolist() for t in names.top(logp, top))
        samples = []
        for r in range(seqs.shape[0]):
            ids = seqs[r].tolist()
            length = self._count_completion(seqs[r])
            ended = length < len(ids) or ids[length - 1] == tok.eos_token_id
            samples.append(names.scored(ids, length, chosen[r], top_ids[r], top_lp[r], ended))
        return samples, int(enc["attention_mask"].sum())

    def _answer_token_ids(self) -> tuple[list[int], list[int]]:
        """Token ids of the spellings of "yes" and "no" (with and without a leading space).

        Only spellings that are one whole token count: a spelling split into pieces ("n" + "o")
        would let a prefix shared with many other words vote. Where no spelling is one token,
        the first pieces are used.
        """

        def ids_of(words):
            encoded = [self.tokenizer.encode(w, add_special_tokens=False) for w in words]
            whole = {e[0] for e in encoded if len(e) == 1}
            return whole or {e[0] for e in encoded if e}

        yes, no = ids_of(["yes", "Yes", " yes", " Yes"]), ids_of(["no", "No", " no", " No"])
        shared = yes & no
        yes, no = sorted(yes - shared), sorted(no - shared)
        if not yes or not no:
            raise ValueError(f"the tokenizer of {self.spec.name_or_path} cannot tell 'yes' from 'no' by first token")
        return yes, no

