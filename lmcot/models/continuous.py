"""Continuous batching: an iteration-level engine whose rows join and leave at every decoding step.

A static batch (``model.generate``) is fixed when it starts: a row that finishes early keeps its
slot until the longest row ends, and a prompt that arrives meanwhile waits for the whole batch.
:class:`ContinuousEngine` schedules at every step instead. ``submit`` queues a request (one prompt,
``n`` samples, its own sampling settings); ``step`` advances every running row by one token in one
forward pass, then admits queued requests into the free slots (first in, first out, under
``max_slots`` rows and an optional token budget): their prefill (T5: the encoder once per prompt
and the first decoder step; causal: the prompt) gives their first token in the same step. A row
leaves as soon as it ends (an end-of-sequence token, or ``max_new_tokens``); ``cancel`` frees a
request's slots at the next step. The batch's caches and the sampler are in
:mod:`lmcot.models.continuous_batch`.

Decoding follows ``generate`` with the model's own generation config: greedy rows take the
argmax, so their tokens equal ``generate``'s (up to float noise between batch shapes); sampled rows
apply temperature, transformers' top-k (the config's ``top_k``, else transformers' default of 50,
which :class:`~lmcot.models.generation.HFGenerator` relies on too) and top-p, in ``generate``'s
order, after the config's ``repetition_penalty``, ``suppress_tokens`` and ``begin_suppress_tokens``.
Any other logits setting in the model's generation config raises
:class:`~lmcot.models.continuous_batch.UnsupportedModel` (the static engine applies it). Each
sampled row draws from a generator of its own, seeded from its request's seed and its sample
index, so its text does not depend on which rows share its batch or when it arrived. It draws from
the same distribution as ``generate`` but among its top-k candidates only (k numbers a step, not
the vocabulary's), so its samples are not ``generate``'s samples under the same seed.

A request may ask for log-probabilities (``Request.logprobs``): each generated token's, and its
likeliest alternatives', read off the same step's logits (the model's own distribution, before
temperature and suppressed tokens, as the static path reports them), so a scored request decodes
beside the others instead of as a static batch of its own.

A request fails alone: an invalid setting or a prompt over the model's limit fails at ``submit``,
and a prefill that raises is retried prompt by prompt, so only the prompt that fails is lost. A
decode step that raises (out of memory) fails the rows running in it.

:class:`ContinuousGenerator` is the :class:`~lmcot.models.generation.Generator` Protocol on top:
``generate`` and ``generate_with_logprobs`` submit every prompt and step until all are done;
``score_yes_no`` (one forward pass, no decoding) runs on the static path. Left out: stop
strings (the Protocol has none), beam search, static caches and compiled decoding (the engine's
caches grow by concatenation, as ``generate``'s dynamic cache does), and thread safety (one thread
owns an engine: it submits, steps and cancels).
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import torch

from lmcot.config import GenerationConfig, ModelSpec
from lmcot.models.continuous_batch import ROWS, RowSampler
from lmcot.models.generation import Generation, HFGenerator, Scored, TokenNames
from lmcot.prompting.fitting import FittedPrompt

def derive_seed(seed: int, index: int) -> int:
    """An independent 63-bit seed for item ``index`` under ``seed`` (a prompt of a call, a sample of a request).

    >>> derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(1, 0)
    True
    """
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class Request:
    """One prompt to continue: ``n`` samples (greedy when ``temperature == 0``, then ``n`` must be 1)."""

    prompt: str
    max_new_tokens: int
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    """Seeds the request's samples (sample ``j`` draws from ``derive_seed(seed, j)``); None: drawn from torch's RNG."""
    logprobs: int | None = None
    """Report each token's log-probability and its ``logprobs`` likeliest alternatives (``Handle.scored``); None: not."""

    def problem(self) -> str:
        """Why the request cannot run ('' when it can)."""
        if self.max_new_tokens < 1:
            return "max_new_tokens must be >= 1"
        if self.n < 1:
            return "n must be >= 1"
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            return "temperature must be >= 0 and top_p in (0, 1]"
        if self.n > 1 and self.temperature <= 0:
            return "n > 1 samples need temperature > 0 (greedy decoding gives one answer)"
        if self.logprobs is not None and self.logprobs < 0:
            return "logprobs must be >= 0"
        return ""


class Cancelled(Exception):
    """The request was cancelled before it finished."""


@dataclass(eq=False)
class Handle:
    """A submitted request: its state (``queued``, ``running``, ``done``, ``failed``, ``cancelled``),
    each sample's token ids so far, and at the end its :class:`Generation` (and with ``logprobs``, each
    sample's :class:`~lmcot.models.generation.Scored`) or its error."""

    request: Request
    state: str = "queued"
    prompt_ids: list[int] = field(default_factory=list, repr=False)
    samples: list[list[int]] = field(default_factory=list, repr=False)
    generation: Generation | None = None
    scored: list[Scored] | None = None
    traces: list["_Trace"] = field(default_factory=list, repr=False)  # per sample, with logprobs
    error: BaseException | None = None
    _running: int = field(default=0, repr=False)  # samples still decoding

    @property
    def done(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def result(self) -> Generation:
        """The generation; raises the request's error, :class:`Cancelled`, or RuntimeError while it runs."""
        if self.state == "failed":
            raise self.error
        if self.state == "cancelled":
            raise Cancelled(f"request cancelled: {self.request.prompt[:40]!r}")
        if self.generation is None:
            raise RuntimeError(f"request still {self.state}")
        return self.generation


@dataclass(eq=False)
class _Trace:
    """A sample's log-probabilities so far: per generated token, its own and its alternatives' (ids, values)."""

    chosen: list[float] = field(default_factory=list)
    top_ids: list[list[int]] = field(default_factory=list)
    top_values: list[list[float]] = field(default_factory=list)


@dataclass(eq=False)
class _Row:
    """One sample of a running request: a row of the batch."""

    handle: Handle
    tokens: list[int]
    generator: torch.Generator | None
    temperature: float
    top_p: float
    trace: _Trace | None = None


@dataclass(eq=False)
class _Running:
    """Rows decoding together: their caches, each row's last token (the next input) and seen tokens."""

    batch: object  # continuous_batch.Seq2SeqRows or CausalRows
    rows: list[_Row]
    pending: torch.Tensor
    seen: torch.Tensor | None  # [rows, vocab]: the tokens each row has seen (repetition penalty only)

    def keep(self, keep: list[int]) -> "_Running | None":
        """Only the rows ``keep`` (batch indices); None when no row is left."""
        if not keep:
            return None
        if len(keep) < len(self.rows):
            index = torch.tensor(keep, dtype=torch.long, device=self.pending.device)
            self.batch.select(index)
            self.rows, self.pending = [self.rows[r] for r in keep], self.pending[index]
            self.seen = None if self.seen is None else self.seen[index]
        return self

    def replace(self, slots: list[int], other: "_Running", index: list[int]) -> None:
        """``other``'s rows ``index`` take over the slots ``slots`` (written in place)."""
        device = self.pending.device
        at, of = torch.tensor(slots, device=device), torch.tensor(index, device=device)
        self.batch.replace(at, other.batch, of)
        for slot, r in zip(slots, index):
            self.rows[slot] = other.rows[r]
        self.pending[at] = other.pending[of]
        if self.seen is not None:
            self.seen[at] = other.seen[of]

    def extend(self, other: "_Running") -> "_Running":
        self.batch.extend(other.batch)
        self.rows, self.pending = self.rows + other.rows, torch.cat([self.pending, other.pending])
        self.seen = None if self.seen is None else torch.cat([self.seen, other.seen])
        return self


class ContinuousEngine:
    """The scheduler: ``submit`` requests, ``step`` all running rows one token, ``cancel`` a request.

    ``max_slots`` rows decode together; ``max_tokens`` (0: none) caps the sum over running rows of
    prompt plus ``max_new_tokens`` tokens. A request whose ``n`` rows exceed either limit runs when
    nothing else does (its samples are never split). ``fitter`` fits prompts to the model's input
    limit (:class:`~lmcot.prompting.fitting.PromptFitter`).
    """

    def __init__(self, model, tokenizer, family: str, device, fitter, *, max_slots: int, max_tokens: int = 0):
        if max_slots < 1:
            raise ValueError("max_slots must be >= 1")
        self.model, self.tokenizer, self.family, self.device, self.fitter = model, tokenizer, family, device, fitter
        self.max_slots, self.max_tokens = max_slots, max_tokens
        self.sampler = RowSampler(model.generation_config, device)
        start = model.generation_config.decoder_start_token_id
        self.start_id = start if start is not None else getattr(model.config, "decoder_start_token_id", None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._queue: deque[Handle] = deque()
        self._running: _Running | None = None
        self._reported: list[Handle] = []  # ended outside a step (failed at submit, cancelled while queued)
        self._names: TokenNames | None = None  # decoded on the first request with logprobs

    # -- scheduler API ------------------------------------------------------------------------
    @property
    def running_rows(self) -> int:
        return len(self._running.rows) if self._running else 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        return self._running is None and not self._queue

    def submit(self, request: Request, fitted: FittedPrompt | None = None) -> Handle:
        """Queue ``request`` (``fitted``: its prompt already fitted to the model, as the Protocol path has it).
        A request that cannot run comes back failed, and is reported by the next ``step``."""
        handle = Handle(request)
        try:
            if problem := request.problem():
                raise ValueError(problem)
            fitted = fitted or self.fitter.fit(request.prompt, reserve=request.max_new_tokens)
            handle.prompt_ids = list(self.tokenizer(fitted.text, truncation=False)["input_ids"])
        except Exception as exc:  # noqa: BLE001 - the request's own failure, delivered on its handle
            self._end(handle, "failed", self._reported, exc)
            return handle
        if request.seed is None:
            handle.request = replace(request, seed=int(torch.randint(0, 2**62, ())))
        self._queue.append(handle)
        return handle

    def cancel(self, handle: Handle) -> None:
        """Stop ``handle``: a queued request leaves the queue now, a running one frees its slots at the next step."""
        if handle.state == "queued":
            self._queue.remove(handle)
            self._end(handle, "cancelled", self._reported)
        elif handle.state == "running":
            handle.state = "cancelling"

    @torch.inference_mode()
    def step(self) -> list[Handle]:
        """Advance every running row by one token, then admit queued requests into the slots that
        ended or are free (their first token comes from their prefill). Returns the handles that
        ended since the last step."""
        ended, self._reported = self._reported, []
        running, freed = self._running, []
        if running is not None:
            freed = [r for r, row in enumerate(running.rows) if row.handle.state == "cancelling"]
            for handle in {id(running.rows[r].handle): running.rows[r].handle for r in freed}.values():
                self._end(handle, "cancelled", ended)
        if running is not None and len(freed) < len(running.rows):
            try:
                logits = running.batch.decode(running.pending)
                tokens = self.sampler(logits, running.rows, running.seen, first=False)
                self._trace(logits, running.rows, tokens)
            except Exception as exc:  # noqa: BLE001 - a failed step fails the rows in it, not the engine
                for handle in {id(r.handle): r.handle for r in running.rows if r.handle.state == "running"}.values():
                    self._end(handle, "failed", ended, exc)
                self._running, freed = None, []
            else:
                freed = sorted(set(freed) | set(self._advance(running, tokens, ended, skip=set(freed))))
        self._admit(freed, ended)
        if self._running is not None:
            self._running.batch.compact()
        return ended

    def run(self, handles: Iterable[Handle]) -> None:
        """Step until every one of ``handles`` has ended."""
        handles = list(handles)
        while not all(h.done for h in handles):
            if self.idle and not self._reported:
                raise RuntimeError("a handle that is not this engine's cannot end by stepping it")
            self.step()

    # -- rows joining and leaving ---------------------------------------------------------------
    def _end(self, handle: Handle, state: str, ended: list[Handle], error: BaseException | None = None) -> None:
        handle.state, handle.error = state, error
        if state == "done":
            texts = tuple(self.tokenizer.decode(s, skip_special_tokens=True).strip() for s in handle.samples)
            handle.generation = Generation(texts=texts, prompt_tokens=len(handle.prompt_ids),
                                           completion_tokens=sum(len(s) for s in handle.samples))
            if handle.traces:
                handle.scored = [self._names.scored(s, len(s), t.chosen, t.top_ids, t.top_values,
                                                    ended=bool(s) and s[-1] in self.sampler.eos)
                                 for s, t in zip(handle.samples, handle.traces)]
        ended.append(handle)

    def _trace(self, logits: torch.Tensor, rows: list[_Row], tokens: torch.Tensor) -> None:
        """Record, for the rows that asked for log-probabilities, each one's new token's and its
        likeliest alternatives' (from ``logits``, the model's own distribution)."""
        wanted = [r for r, row in enumerate(rows) if row.trace is not None]
        if not wanted:
            return
        if self._names is None:
            self._names = TokenNames(self.tokenizer)
        index = torch.tensor(wanted, device=logits.device)
        logp = torch.log_softmax(logits[index].float(), dim=-1)
        chosen = logp.gather(-1, tokens[index][:, None]).squeeze(-1).tolist()
        values, ids = (t.tolist() for t in self._names.top(logp, max(rows[r].handle.request.logprobs for r in wanted)))
        for j, r in enumerate(wanted):
            trace, k = rows[r].trace, rows[r].handle.request.logprobs
            trace.chosen.append(chosen[j])
            trace.top_ids.append(ids[j][:k])
            trace.top_values.append(values[j][:k])

    def _advance(self, running: _Running, tokens: torch.Tensor, ended: list[Handle], skip=frozenset()) -> list[int]:
        """Append each row's new token (also the next step's input), but the rows in ``skip``; returns
        the rows that ended (their slots are free)."""
        values = tokens.tolist()
        if running.seen is not None:
            running.seen[torch.arange(len(values), device=tokens.device), tokens] = True
        finished = []
        for r, (row, token) in enumerate(zip(running.rows, values)):
            if r in skip:
                continue
            row.tokens.append(token)
            if token in self.sampler.eos or len(row.tokens) >= row.handle.request.max_new_tokens:
                finished.append(r)
                row.handle._running -= 1
                if row.handle._running == 0:
                    self._end(row.handle, "done", ended)
        running.pending = tokens
        return finished

    def _admissible(self, freed: list[int]) -> list[Handle]:
        """Queued requests that fit beside the running rows but ``freed``, first in first out (a request
        that does not fit holds the line)."""
        group: list[Handle] = []
        gone = set(freed)
        live = [row for r, row in enumerate(self._running.rows) if r not in gone] if self._running else []
        rows, tokens = len(live), sum(len(r.handle.prompt_ids) + r.handle.request.max_new_tokens for r in live)
        while self._queue:
            head = self._queue[0]
            cost = head.request.n * (len(head.prompt_ids) + head.request.max_new_tokens)
            over = rows + head.request.n > self.max_slots or (self.max_tokens and tokens + cost > self.max_tokens)
            if rows and over:
                break
            group.append(self._queue.popleft())
            rows, tokens = rows + head.request.n, tokens + cost
        return group

    def _admit(self, freed: list[int], ended: list[Handle]) -> None:
        """Prefill the requests that fit; their rows take the ``freed`` slots first, the rest join at
        the end; freed slots left over leave the batch."""
        running = self._running
        group = self._admissible(freed)
        joining: _Running | None = None
        prefilled = []
        if group:
            try:
                prefilled = [self._prefill(group)]
            except Exception:  # noqa: BLE001 - find the prompt that fails; the others still join
                for handle in group:
                    try:
                        prefilled.append(self._prefill([handle]))
                    except Exception as exc:  # noqa: BLE001
                        self._end(handle, "failed", ended, exc)
        for new, tokens in prefilled:
            for handle in {id(r.handle): r.handle for r in new.rows}.values():
                handle.state, handle._running = "running", handle.request.n
            done = set(self._advance(new, tokens, ended))
            new = new.keep([r for r in range(len(new.rows)) if r not in done])
            if new is not None:
                joining = new if joining is None else joining.extend(new)
        if running is None:
            self._running = joining
            return
        fill = min(len(freed), len(joining.rows)) if joining else 0
        if fill:
            running.replace(freed[:fill], joining, list(range(fill)))
        gone = set(freed[fill:])
        running = running.keep([r for r in range(len(running.rows)) if r not in gone])
        if joining is not None and fill < len(joining.rows):
            joining = joining.keep(list(range(fill, len(joining.rows))))
            running = joining if running is None else running.extend(joining)
        self._running = running

    def _prefill(self, group: list[Handle]) -> tuple[_Running, torch.Tensor]:
        """The joining rows and their first tokens (the engine's own state is left unchanged)."""
        batch, logits = ROWS[self.family].prefill(
            self.model, [h.prompt_ids for h in group], [h.request.n for h in group], pad_id=self.pad_id,
            start_id=self.start_id, device=self.device)
        rows = []
        for handle in group:
            request = handle.request
            handle.samples = [[] for _ in range(request.n)]
            handle.traces = [_Trace() for _ in range(request.n)] if request.logprobs is not None else []
            for j, tokens in enumerate(handle.samples):
                generator = None
                if request.temperature > 0:
                    generator = torch.Generator(device=self.device).manual_seed(derive_seed(request.seed, j))
                trace = handle.traces[j] if handle.traces else None
                rows.append(_Row(handle, tokens, generator, request.temperature, request.top_p, trace))
        seen = None
        if self.sampler.penalty != 1.0:
            seen = torch.zeros(len(rows), logits.shape[-1], dtype=torch.bool, device=self.device)
            for r, row in enumerate(rows):
                context = row.handle.prompt_ids if self.family == "causal" else [self.start_id]
                seen[r, torch.tensor(context, dtype=torch.long, device=self.device)] = True
        running = _Running(batch, rows, logits.new_zeros(0, dtype=torch.long), seen)
        tokens = self.sampler(logits, rows, seen, first=True)
        self._trace(logits, rows, tokens)
        return running, tokens


class ContinuousGenerator:
    """The :class:`~lmcot.models.generation.Generator` Protocol on a :class:`ContinuousEngine`.

    Loads the model as :class:`~lmcot.models.generation.HFGenerator` does (and keeps one as
    ``static`` for yes/no scoring); ``max_slots`` is ``batch_size`` and the
    token budget ``config.max_batch_tokens``. ``engine`` is the scheduler a serving queue can feed.
    """

    def __init__(self, spec: ModelSpec, batch_size: int | None = None, loaded=None,
                 config: GenerationConfig | None = None):
        self.static = HFGenerator(spec, batch_size=batch_size, loaded=loaded, config=config)
        s = self.static
        self.spec, self.config, self.batch_size = s.spec, s.config, s.batch_size
        self.model, self.tokenizer, self.family, self.device = s.model, s.tokenizer, s.family, s.device
        self.fitter = s.fitter
        self.engine = ContinuousEngine(self.model, self.tokenizer, self.family, self.device, self.fitter,
                                       max_slots=self.batch_size, max_tokens=self.config.max_batch_tokens)

    def fit(self, prompts: Sequence[str], reserve: int = 0) -> list[FittedPrompt]:
        return self.static.fit(prompts, reserve)

    def encode_prompts(self, prompts: Sequence[str], reserve: int = 0) -> dict:
        return self.static.encode_prompts(prompts, reserve)

    def _run(self, prompts, max_new_tokens, n, temperature, top_p, seed, logprobs=None) -> list[Handle]:
        """Each prompt as an engine request (prompt ``i`` seeded ``derive_seed(seed, i)``), stepped to the end."""
        if n > 1 and temperature <= 0:
            raise ValueError("n > 1 samples need temperature > 0 (greedy decoding gives one answer)")
        fitted = self.fit(prompts, reserve=max_new_tokens)  # an over-long prompt fails the call, as the static path
        base = seed if seed is not None else int(torch.randint(0, 2**62, ()))
        handles: dict[int, Handle] = {}
        for i in sorted(range(len(fitted)), key=lambda i: (fitted[i].tokens, i)):  # short prompts share prefills
            request = Request(prompts[i], max_new_tokens, n, temperature, top_p, derive_seed(base, i), logprobs)
            handles[i] = self.engine.submit(request, fitted=fitted[i])
        self.engine.run(handles.values())
        ordered = [handles[i] for i in range(len(fitted))]
        for handle in ordered:
            handle.result()  # raises the first failed request's error
        return ordered

    def generate(self, prompts, *, max_new_tokens, n=1, temperature=0.0, top_p=1.0, seed=None) -> list[Generation]:
        return [h.result() for h in self._run(prompts, max_new_tokens, n, temperature, top_p, seed)]

    def score_yes_no(self, prompts: Sequence[str]) -> list[float]:
        return self.static.score_yes_no(prompts)

    def generate_with_logprobs(self, prompts: Sequence[str], *, max_new_tokens: int, n: int = 1,
                               temperature: float = 0.0, top_p: float = 1.0, top: int = 5,
                               seed: int | None = None) -> tuple[list[Scored], int]:
        """As :meth:`HFGenerator.generate_with_logprobs <lmcot.models.generation.HFGenerator.generate_with_logprobs>`,
        decoded by the engine (``seed``: as :meth:`generate`'s)."""
        handles = self._run(prompts, max_new_tokens, n, temperature, top_p, seed, logprobs=top)
        return [s for h in handles for s in h.scored], sum(len(h.prompt_ids) for h in handles)
