"""Evaluation stage: load the models a method needs, answer the dev split, write results.

Where it runs is ``eval.on_cluster``: off, in the calling process (evaluation sets are
small next to training generation, and ``lmcot eval`` then needs no cluster); on, in one
Ray actor with ``eval.num_cpus``/``num_gpus`` on the large LM's worker group, because on a
GPU cluster the job driver runs on a CPU-only head. Either way an :class:`Evaluator` keeps
the models loaded between evaluations (the pipeline runs eight with one large LM).

An evaluation's identity (:func:`eval_identity`) is defined here, once, and so is its record:
:func:`evaluate_step` records the finished evaluation as the step of ``RUN/eval/<label>/``
(:mod:`lmcot.runs.step`), for ``lmcot eval`` and for each report row of ``lmcot run`` alike.
``lmcot run`` skips a report row whose record carries the identity the row has, so an evaluation
a user already ran is reused; ``lmcot eval`` itself always evaluates.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lmcot.config import Config, ModelSpec, identity, to_dict
from lmcot.datasets.data import load_split
from lmcot.evaluation.evaluator import (evaluate, judge_rationales, prepare_questions, rationale_rows, summarize,
                                        write_outputs)
from lmcot.evaluation.judge_probe import probe
from lmcot.models.factory import make_generator
from lmcot.scoring.metrics import dataset_aliases
from lmcot.planning.resources import eval_actor_resources, eval_need
from lmcot.training.rewards import RewardJudge
from lmcot.runs import step
from lmcot.runs.evals import write_aspects, write_judge_separation
from lmcot.runs.rundir import TRAINING_STAGES, RunDir

UNTRAINED = "base"
"""The small-LM stage of an LM-guided evaluation whose small LM is not a model this run trained
(``small`` as configured: the ``lm_guided-undistilled`` row of the report)."""


def run(cfg: Config, run_dir: RunDir, judge_aspects: bool = False) -> dict:
    """Evaluate ``cfg.eval`` on every dataset's dev split (``lmcot eval``); returns the metrics summary
    and records it with the evaluation's identity (see the module doc)."""
    evaluator = open_evaluator(cfg)
    try:
        return evaluate_step(evaluator, cfg, run_dir, small_stage(cfg, run_dir), judge_aspects)
    finally:
        evaluator.close()


def evaluate_step(evaluator: "Evaluator | RemoteEvaluator", cfg: Config, run_dir: RunDir, stage: str | None,
                  judge: bool) -> dict:
    """One evaluation on an open evaluator, recorded with :func:`eval_identity` (``stage``: the
    training stage of its small LM, see :func:`small_stage`); returns the metrics summary."""
    summary = evaluator.evaluate(cfg, run_dir, judge)
    label = cfg.eval.output_label
    step.record(run_dir.eval_dir(label), label, eval_identity(cfg, run_dir, stage, judge), summary)
    return summary


def small_stage(cfg: Config, run_dir: RunDir) -> str | None:
    """Which small LM an evaluation reads: the training stage of this run whose exported model
    ``small.name_or_path`` is, :data:`UNTRAINED` for any other, None for a method without one."""
    if cfg.eval.method != "lm_guided":
        return None
    where = Path(cfg.small.name_or_path).expanduser().resolve()
    return next((stage for stage in TRAINING_STAGES if where == run_dir.model(stage)), UNTRAINED)


def eval_identity(ecfg: Config, run_dir: RunDir, stage: str | None, judge: bool) -> str:
    """An evaluation's identity: what it reads, its small LM known by the trained model's identity
    (not by its path, so a moved run directory reruns nothing). The label is the output folder's
    name however it was given, and judging counts only for a method that writes rationales."""
    ev = dataclasses.replace(ecfg.eval, label=ecfg.eval.output_label)
    inputs = ecfg.sections("data", "large", "generation") | {"eval": ev, "judge": judge and ev.method != "standard"}
    if stage == UNTRAINED:
        inputs["small"] = ecfg.small
    elif stage is not None:
        inputs["small"] = dataclasses.replace(ecfg.small, name_or_path=run_dir.model_identity(stage))
    return identity(inputs)


class Evaluator:
    """Runs evaluations, keeping the large LM and the latest small LM loaded between them."""

    def __init__(self):
        self._loaded: dict[str, tuple[dict, object]] = {}

    def _generator(self, role: str, spec: ModelSpec, cfg: Config):
        key = {"spec": to_dict(spec), "generation": to_dict(cfg.generation)}
        if role not in self._loaded or self._loaded[role][0] != key:
            self._loaded.pop(role, None)  # free the old model before loading the next
            self._loaded[role] = (key, make_generator(spec, cfg.generation))
        return self._loaded[role][1]

    def evaluate(self, cfg: Config, run_dir: RunDir, judge_aspects: bool = False) -> dict:
        """One evaluation (``cfg.eval`` with ``cfg.small`` as the small LM); see :func:`evaluate_with`."""
        large = self._generator("large", cfg.large, cfg)
        small = self._generator("small", cfg.small, cfg) if cfg.eval.method == "lm_guided" else None
        return evaluate_with(cfg, run_dir, small=small, large=large, judge_aspects=judge_aspects)

    def ready(self) -> bool:
        """Answered once the actor runs (see :class:`RemoteEvaluator`)."""
        return True

    def close(self) -> None:
        self._loaded.clear()


class RemoteEvaluator:
    """An :class:`Evaluator` in a Ray actor sized by ``eval.num_cpus``/``num_gpus``."""

    def __init__(self, cfg: Config):
        import ray

        from lmcot.stages.cluster import ensure_ray

        ev = cfg.eval
        ensure_ray()
        check_fits(cfg)
        need = eval_actor_resources(cfg)
        self._actor = ray.remote(Evaluator).options(
            num_cpus=need.pop("CPU"), num_gpus=need.pop("GPU"), resources=need or None,
        ).remote()
        try:
            ray.get(self._actor.ready.remote(), timeout=ev.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.kill(self._actor)
            raise TimeoutError(
                f"the evaluation actor was not placed within eval.start_timeout_s={ev.start_timeout_s:g} s: no node "
                f"offers eval.num_cpus={ev.num_cpus:g} / num_gpus={ev.num_gpus:g}"
                + (f" with the resource large.ray_resource={cfg.large.ray_resource!r}" if cfg.large.ray_resource
                   else "") + " (check the worker groups, or raise the timeout for a slow autoscaler)") from None

    def evaluate(self, cfg: Config, run_dir: RunDir, judge_aspects: bool = False) -> dict:
        import ray

        return ray.get(self._actor.evaluate.remote(cfg, run_dir, judge_aspects))

    def close(self) -> None:
        import ray

        ray.kill(self._actor)


def check_fits(cfg: Config) -> None:
    """With ``eval.on_cluster``, the evaluation actor must fit the cluster (see ``require_resources``)."""
    from lmcot.stages.cluster import require_resources

    if cfg.eval.on_cluster:
        require_resources(eval_need(cfg))


def open_evaluator(cfg: Config) -> Evaluator | RemoteEvaluator:
    """Where this config's evaluations run: here, or in a Ray actor (``eval.on_cluster``)."""
    return RemoteEvaluator(cfg) if cfg.eval.on_cluster else Evaluator()


def with_small_lm(cfg: Config, path: str | None) -> Config:
    """``cfg`` with the small LM at ``path`` (a trained model folder); unchanged for None."""
    return cfg if path is None else dataclasses.replace(cfg, small=dataclasses.replace(cfg.small, name_or_path=path))


def evaluate_with(cfg: Config, run_dir: RunDir, *, small, large, judge_aspects: bool = False) -> dict:
    """Evaluate ``cfg.eval`` with loaded generators; writes ``RUN/eval/<label>/``.

    With ``judge_aspects``, the large LM also scores every rationale on the eight aspects
    (their means beside the metrics: :func:`lmcot.runs.evals.write_aspects`); for the gold-rationale
    reference row it also judges each gold chain of thought against copies corrupted to violate each
    aspect, the report's measure of what the judge can tell apart (:mod:`lmcot.evaluation.judge_probe`).
    """
    ev = cfg.eval
    datasets = {spec.name: (spec, load_split(spec, "dev")) for spec in cfg.data.datasets}
    tokenizer = getattr(large, "tokenizer", None)
    per_dataset = {}
    judged: tuple[list, list] = ([], [])
    for name, (spec, examples) in datasets.items():
        if ev.limit:
            examples = examples[: ev.limit]
        questions = prepare_questions(
            examples, mode=cfg.data.context_mode, tokenizer=tokenizer, max_tokens=cfg.data.context_max_tokens
        )
        results = evaluate(
            questions, method=ev.method, k=ev.self_consistency, small=small, large=large, gen=cfg.generation,
            desc=f"{ev.output_label}/{name}", adaptive=ev.adaptive, round_size=ev.adaptive_round_size,
        )
        aliases = dataset_aliases(spec)
        per_dataset[name] = (results, summarize(examples, results, aliases))
        judged[0].extend(questions[: ev.judge_limit or None])
        judged[1].extend(results[: ev.judge_limit or None])
    summary = write_outputs(run_dir, ev, per_dataset, cfg.data.context_mode)
    if judge_aspects and any(r.rationales for r in judged[1]):
        judge = RewardJudge(large, answer_max_new_tokens=cfg.generation.answer_max_new_tokens)
        write_aspects(run_dir.eval_dir(ev.output_label), judge_rationales(judged[0], judged[1], judge))
        if ev.method == "gold_rationale":
            def score(aspect, qs, cs, rs):  # the same judge, asked one aspect
                return RewardJudge(large, aspects=(aspect,)).aspect_scores(qs, cs, rs)[aspect]

            rows = rationale_rows(*judged)  # the rows judge_rationales scored: their scores are remembered
            write_judge_separation(run_dir.eval_dir(ev.output_label), probe(*rows, judge.aspect_scores(*rows), score))
    return summary
