"""The frozen large LM as a Ray actor pool that every training worker calls for rewards.

During refinement the large LM answers from rationales (task reward) and judges them
(aspect rewards). It lives in its own actors, sized and placed by config
(``refine.judge_num_actors`` / ``judge_num_cpus`` / ``judge_num_gpus``: its own GPUs in
production), so the training workers hold only the small LM.

Batching happens at two levels:

- a worker sends all completions of its step in one call per reward kind (the
  :class:`~lmcot.training.rewards.RewardJudge` memoises per batch);
- each actor merges the calls that arrive from different workers within
  ``judge_batch_wait_ms`` (and all that queue while a forward pass runs) into one
  batched forward pass, then hands every caller its slice.

:class:`JudgeClient` is what the workers hold: a picklable
:class:`~lmcot.models.generation.Generator` that splits a call over the actors of the pool
(one slice each, in parallel) and waits with a timeout, so a dead or stuck judge fails
the step instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Sequence

import ray

from lmcot.config import GenerationConfig, ModelSpec

log = logging.getLogger(__name__)


class _Batcher:
    """Merges concurrent requests for one operation into batched calls of ``fn(items) -> results``."""

    def __init__(self, fn, wait_s: float, lock: asyncio.Lock):
        self.fn, self.wait_s, self.lock = fn, wait_s, lock
        self.pending: list[tuple[list, asyncio.Future]] = []
        self.task: asyncio.Task | None = None
        self.calls = 0
        self.items = 0

    async def submit(self, items: list):
        future = asyncio.get_running_loop().create_future()
        self.pending.append((list(items), future))
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self):
        await asyncio.sleep(self.wait_s)  # let calls from other workers arrive
        while self.pending:
            batch, self.pending = self.pending, []
            flat = [x for items, _ in batch for x in items]
            try:
                # in a thread, so new calls queue up (and join the next batch) while this one runs;
                # the lock keeps one forward pass at a time on the model
                async with self.lock:
                    results = await asyncio.to_thread(self.fn, flat)
            except Exception as exc:  # every caller of this batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.calls += 1
            self.items += len(flat)
            start = 0
            for items, future in batch:
                if not future.done():
                    future.set_result(results[start : start + len(items)])
                start += len(items)


@ray.remote
class JudgeActor:
    """One copy of the large LM: ``generate`` and ``score_yes_no`` with cross-caller batching."""

    def __init__(self, spec: dict, generation: dict, batch_size: int, batch_wait_ms: float):
        from lmcot.config.loader import build
        from lmcot.models.factory import make_generator

        spec_ = build(ModelSpec, spec)
        gen = build(GenerationConfig, {**generation, "batch_size": batch_size})
        self.generator = make_generator(spec_, gen)
        self.wait_s = batch_wait_ms / 1000.0
        self.busy_seconds = 0.0
        self.lock: asyncio.Lock | None = None  # created in the actor's event loop
        self.score: _Batcher | None = None
        self.generators: dict[tuple, _Batcher] = {}

    def _timed(self, fn):
        def run(items):
            start = time.perf_counter()
            try:
                return fn(items)
            finally:
                self.busy_seconds += time.perf_counter() - start
        return run

    async def ready(self) -> bool:
        return True

    def _batcher(self, fn) -> _Batcher:
        if self.lock is None:
            self.lock = asyncio.Lock()
        return _Batcher(self._timed(fn), self.wait_s, self.lock)

    async def score_yes_no(self, prompts: list[str]) -> list[float]:
        if self.score is None:
            self.score = self._batcher(self.generator.score_yes_no)
        return await self.score.submit(prompts)

    async def generate(self, prompts: list[str], max_new_tokens: int, n: int = 1, temperature: float = 0.0,
                       top_p: float = 1.0, seed: int | None = None) -> list:
        key = (max_new_tokens, n, temperature, top_p, seed)
        if key not in self.generators:
            def fn(items, _key=key):
                return self.generator.generate(items, max_new_tokens=_key[0], n=_key[1], temperature=_key[2],
                                               top_p=_key[3], seed=_key[4])
            self.generators[key] = self._batcher(fn)
        return await self.generators[key].submit(prompts)

    async def stats(self) -> dict:
        """Forward batches run and prompts served (both operations), and seconds spent in the model."""
        batchers = [b for b in (self.score, *self.generators.values()) if b is not None]
        return {"batches": sum(b.calls for b in batchers), "prompts": sum(b.items for b in batchers),
                "busy_seconds": self.busy_seconds}


def start_judges(spec: ModelSpec, generation: GenerationConfig, *, num_actors: int, num_cpus: float,
                 num_gpus: float, batch_size: int, batch_wait_ms: float, timeout_s: float = 600.0,
                 placement: dict[str, float] | None = None) -> list:
    """Start the judge pool and wait until every actor has loaded its model (or fail naming the config).

    ``placement``: extra Ray resources per actor (the large LM's ``ray_resource``).
    """
    from lmcot.config import to_dict

    options = dict(num_cpus=num_cpus, num_gpus=num_gpus, max_concurrency=64, resources=placement or None)
    actors = [JudgeActor.options(**options).remote(to_dict(spec), to_dict(generation), batch_size, batch_wait_ms)
              for _ in range(num_actors)]
    refs = [a.ready.remote() for a in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if len(ready) < len(refs):
        for a in actors:
            ray.kill(a)
        raise TimeoutError(
            f"the large-LM judge actors did not start within {timeout_s:.0f} s: the cluster may lack "
            f"refine.judge_num_cpus={num_cpus:g} / judge_num_gpus={num_gpus:g} per actor for "
            f"judge_num_actors={num_actors}, or loading {spec.name_or_path} is slow (raise refine.judge_timeout_s)")
    ray.get(refs)  # surface a model-loading error with its own message
    return actors


class JudgeClient:
    """A :class:`~lmcot.models.generation.Generator` whose calls go to a judge actor pool (picklable)."""

    def __init__(self, actors: Sequence, timeout_s: float = 600.0):
        if not actors:
            raise ValueError("JudgeClient needs at least one judge actor")
        self.actors = list(actors)
        self.timeout_s = timeout_s

    def _split(self, prompts: Sequence[str]) -> list[tuple[int, int]]:
        n, k = len(prompts), min(len(self.actors), max(1, len(prompts)))
        bounds = [round(i * n / k) for i in range(k + 1)]
        return [(bounds[i], bounds[i + 1]) for i in range(k)]

    def _call(self, method: str, prompts: Sequence[str], **kwargs) -> list:
        if not prompts:
            return []
        spans = self._split(prompts)
        refs = [getattr(self.actors[i], method).remote(list(prompts[a:b]), **kwargs) for i, (a, b) in enumerate(spans)]
        try:
            parts = ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"a large-LM {method} call of {len(prompts)} prompts took over {self.timeout_s:.0f} s "
                               "(refine.judge_timeout_s)") from None
        return [x for part in parts for x in part]

    def generate(self, prompts, *, max_new_tokens, n=1, temperature=0.0, top_p=1.0, seed=None):
        return self._call("generate", prompts, max_new_tokens=max_new_tokens, n=n, temperature=temperature,
                          top_p=top_p, seed=seed)

    def score_yes_no(self, prompts):
        return self._call("score_yes_no", prompts)

    def stats(self) -> list[dict]:
        return ray.get([a.stats.remote() for a in self.actors], timeout=self.timeout_s)
