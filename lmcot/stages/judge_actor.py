"""The frozen large LM as a Ray actor pool that every training worker calls for rewards.

During refinement the large LM answers from rationales (task reward) and judges them
(aspect rewards). It lives in its own actors, sized and placed by config
(``refine.judge_num_actors`` / ``judge_num_cpus`` / ``judge_num_gpus``: its own GPUs in
production), so the training workers hold only the small LM.

Batching happens at two levels:

- a worker sends all completions of its step in one call per reward kind (the
  :class:`~lmcot.training.rewards.RewardJudge` memoises per batch);
- each actor puts every call in its :class:`~lmcot.serving.model_queue.QueuedModel`, the same
  work queue Serve's model replicas use: calls from different workers with equal settings that
  arrive within ``judge_batch_wait_ms`` (and all that queue while a forward pass runs) share one
  forward pass of at most ``judge_batch_size`` rows, and a call that fails fails alone.

:class:`JudgeClient` is what the workers hold: a picklable
:class:`~lmcot.models.generation.Generator` that splits a call over the actors of the pool
(one slice each, in parallel) and waits with a timeout, so a dead or stuck judge fails
the step instead of hanging the run.
"""

from __future__ import annotations

import logging
from typing import Sequence

import ray

from lmcot.config import GenerationConfig, ModelSpec
from lmcot.serving.model_queue import QueuedModel
from lmcot.serving.work_queue import QueueLimits

log = logging.getLogger(__name__)
MAX_JUDGE_TOKENS = 4096
"""New tokens per row a judge batch allows for: above any answer or rationale length a reward asks for."""


@ray.remote
class JudgeActor:
    """One copy of the large LM: ``generate`` and ``score_yes_no`` with cross-caller batching."""

    def __init__(self, spec: dict, generation: dict, batch_size: int, batch_wait_ms: float):
        from lmcot.config.loader import build
        from lmcot.models.factory import make_generator

        spec_ = build(ModelSpec, spec)
        gen = build(GenerationConfig, {**generation, "batch_size": batch_size})
        # Rows cap a forward pass; new tokens do not (a judge step's calls are all short).
        limits = QueueLimits(max_rows=batch_size, max_cost=batch_size * MAX_JUDGE_TOKENS,
                             gather_s=batch_wait_ms / 1000.0)
        self.model = QueuedModel(make_generator(spec_, gen), limits, name="lmcot-judge")

    async def ready(self) -> bool:
        return True

    async def score_yes_no(self, prompts: list[str]) -> list[float]:
        return await self.model.score_yes_no(prompts)

    async def generate(self, prompts: list[str], max_new_tokens: int, n: int = 1, temperature: float = 0.0,
                       top_p: float = 1.0, seed: int | None = None) -> list:
        return await self.model.generate(prompts, max_new_tokens=max_new_tokens, n=n, temperature=temperature,
                                         top_p=top_p, seed=seed)

    async def stats(self) -> dict:
        """Forward batches run (``merged_batches``: those shared by several calls), calls and prompts
        served, and seconds spent in the model."""
        s = self.model.stats()
        return {"batches": s["batches"], "merged_batches": s["merged_batches"], "calls": s["jobs"],
                "prompts": s["items"], "busy_seconds": s["busy_seconds"]}


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
