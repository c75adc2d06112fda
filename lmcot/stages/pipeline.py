"""The whole method in one command: rationales -> distill -> (search) -> refine -> eval -> report.

One skip rule for every step (:mod:`lmcot.runs.step`): a step is done when its record
carries the identity it would compute now, :func:`lmcot.config.identity` of the fields
it reads minus run-only ones, chained through the identities of what it reads from
(distillation hashes the kept pairs themselves, refinement the distilled model's
identity, an evaluation its small LM's). Every step records itself when it finishes, the
same way whether ``lmcot run`` or its own command ran it, so each record is written once
and a step run alone is skipped here. The training stages also check their record
themselves (:func:`lmcot.stages.train_common.run_training`), so ``lmcot distill`` and
``lmcot run`` decide alike; the pipeline checks the other steps. A rerun skips every step whose
identity is unchanged, a changed config reruns exactly the steps it affects (changing
``eval.limit`` reruns the evaluations only; changing ``distill`` reruns distillation,
refinement and the evaluations of their models), and changing a run-only field (workers'
CPUs, judge resources, retries) reruns nothing. A step that died wrote no record, so it
runs again and resumes from its own checkpoints.

The report compares standard prompting, CoT prompting and LM-guided CoT with the
distilled and the refined small LM (those of ``pipeline.self_consistency_rows`` also with
self-consistency) against two reference rows: the large LM answering from the gold
supporting facts (an oracle upper bound) or from an empty rationale (the floor). Its Claims
table compares them paired on the same questions (:mod:`lmcot.evaluation.claims`).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import replace
from pathlib import Path

from lmcot.config import Config, load_config
from lmcot.config.pipeline import REPORT_ROWS
from lmcot.evaluation.report import write_report
from lmcot.runs import step
from lmcot.runs.rundir import RunDir
from lmcot.stages.cluster import ensure_ray
from lmcot.stages.evaluate import UNTRAINED, eval_identity, evaluate_step  # one identity and record for `lmcot eval` and the report rows

log = logging.getLogger("lmcot.pipeline")


def _stage(module: str):
    return importlib.import_module(f"lmcot.stages.{module}")


def eval_plan(cfg: Config, run_dir: RunDir) -> list[tuple[str, str, int, str | None]]:
    """(label, method, k, training stage of the small LM) of every evaluation in the report: each row
    at k = 1, the rows of ``pipeline.self_consistency_rows`` also at k, then the reference rows."""
    k = cfg.pipeline.self_consistency
    plan = []
    for label, method, stage in REPORT_ROWS:
        plan.append((label, method, 1, stage))
        if label in cfg.pipeline.self_consistency_rows:
            plan.append((f"{label}-sc{k}", method, k, stage))
    references = [("gold-rationale", "gold_rationale", 1, None), ("empty-rationale", "empty_rationale", 1, None)]
    return plan + (references if cfg.pipeline.reference_rows else [])


class _Steps:
    """Runs a step unless its record holds the identity it has now (the step records itself when
    it finishes); remembers what ran."""

    def __init__(self):
        self.status: dict[str, str] = {}

    def __call__(self, name: str, out_dir: Path, step_identity: str, fn) -> dict:
        done = step.done(out_dir, step_identity)
        if done is not None:
            log.info("step %s: up to date, skipped", name)
            self.status[name] = "skipped"
            return done
        log.info("step %s: running", name)
        summary = fn()
        self.status[name] = "ran"
        return summary

    def training(self, name: str, summary: dict) -> dict:
        """A training stage, which applied the same rule itself."""
        self.status[name] = "skipped" if summary.get("skipped") else "ran"
        return summary


def run(cfg: Config, run_dir: RunDir) -> dict:
    from lmcot.planning.resources import eval_need
    from lmcot.stages.cluster import require_resources

    ensure_ray()
    require_resources(eval_need(cfg))  # the evaluations come last: find a misfit before hours of training
    steps = _Steps()
    rationales = _stage("rationales")
    steps("rationales", run_dir.rationales, rationales.stage_identity(cfg), lambda: rationales.run(cfg, run_dir))
    steps.training("distill", _stage("distill").run(cfg, run_dir))

    refine_cfg = cfg
    if cfg.search.enabled:
        search = _stage("search")
        steps("search", run_dir.search, search.search_identity(cfg, run_dir), lambda: search.run(cfg, run_dir))
        if run_dir.best_reward_weights.is_file():
            best = load_config(run_dir.best_reward_weights)
            refine_cfg = replace(cfg, refine=replace(cfg.refine, reward_weights=best.refine.reward_weights))
    steps.training("refine", _stage("refine").run(refine_cfg, run_dir))

    evaluate = _stage("evaluate")
    evaluator = None  # opened at the first evaluation that has to run: a rerun loads no model

    def run_eval(ecfg: Config, stage: str | None, judge: bool) -> dict:
        nonlocal evaluator
        evaluator = evaluator or evaluate.open_evaluator(ecfg)
        return evaluate_step(evaluator, ecfg, run_dir, stage, judge)

    try:
        for label, method, k, stage in eval_plan(cfg, run_dir):
            ecfg = evaluate.with_small_lm(
                replace(cfg, eval=replace(cfg.eval, method=method, self_consistency=k, label=label)),
                str(run_dir.model(stage)) if stage not in (None, UNTRAINED) else None)
            judge = cfg.pipeline.judge_rationales and k == 1 and method != "empty_rationale"
            steps(label, run_dir.eval_dir(label), eval_identity(ecfg, run_dir, stage, judge),
                  lambda: run_eval(ecfg, stage, judge))  # noqa: B023 (called at once)
    finally:
        if evaluator is not None:
            evaluator.close()

    report = write_report(run_dir, order=[label for label, *_ in eval_plan(cfg, run_dir)], notes=[
        *([f"**{cfg.pipeline.report_note}**", ""] if cfg.pipeline.report_note else []),
        f"Small LM `{cfg.small.name_or_path}`, large LM `{cfg.large.name_or_path}`; "
        f"self-consistency rows use k={cfg.pipeline.self_consistency}; "
        f"reward weights {dict(refine_cfg.refine.reward_weights)}.", "",
    ])
    log.info("report written to %s", report)
    return {"report": str(report), "steps": steps.status}
