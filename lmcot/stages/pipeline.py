"""The whole method in one command: rationales -> distill -> (search) -> refine -> eval -> report.

Each step writes a manifest with the hash of the config sections it reads, chained
through the hashes of the steps before it. A rerun skips every step whose hash is
unchanged, and a changed config reruns exactly the steps it affects (changing
``eval.limit`` reruns the evaluations only; changing ``distill`` reruns distillation,
refinement and the evaluations of their models). A step that died wrote no manifest,
so it runs again and resumes from its own checkpoints.

The report compares standard prompting, CoT prompting and LM-guided CoT with the
distilled and the refined small LM, each with and without self-consistency.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import replace
from pathlib import Path

from lmcot.config import Config, load_config
from lmcot.manifest import chain_hash, is_fresh, read_manifest, write_manifest
from lmcot.report import write_report
from lmcot.rundir import RunDir
from lmcot.stages.cluster import ensure_ray

log = logging.getLogger("lmcot.pipeline")


class _Steps:
    """Runs a step unless its manifest says it is already done with the same config."""

    def __init__(self):
        self.status: dict[str, str] = {}

    def __call__(self, name: str, out_dir: Path, config_hash: str, fn) -> dict:
        if is_fresh(out_dir, config_hash):
            log.info("step %s: up to date, skipped", name)
            self.status[name] = "skipped"
            return read_manifest(out_dir)["summary"]
        log.info("step %s: running", name)
        summary = fn()
        write_manifest(out_dir, name, config_hash, summary if isinstance(summary, dict) else {})
        self.status[name] = "ran"
        return summary


def _stage(module: str):
    return importlib.import_module(f"lmcot.stages.{module}")


def eval_plan(cfg: Config, run_dir: RunDir) -> list[tuple[str, str, int, str | None]]:
    """(label, method, k, small-LM path) of every evaluation in the report."""
    k = cfg.pipeline.self_consistency
    rows = (("standard", "standard", None), ("cot", "cot", None),
            ("lm_guided-distilled", "lm_guided", str(run_dir.distill_model)),
            ("lm_guided-refined", "lm_guided", str(run_dir.refine_model)))
    return [(label + (f"-sc{kk}" if kk > 1 else ""), method, kk, model)
            for label, method, model in rows for kk in (1, k)]


def run(cfg: Config, run_dir: RunDir) -> dict:
    ensure_ray()
    evaluate = _stage("evaluate")
    evaluate.check_fits(cfg)  # the evaluations come last: find a misfit before hours of training
    step = _Steps()
    h_rationales = chain_hash("rationales", cfg.section_hash("data", "large", "generation", "rationales"))
    step("rationales", run_dir.rationales, h_rationales, lambda: _stage("rationales").run(cfg, run_dir))

    h_distill = chain_hash("distill", h_rationales, cfg.section_hash("seed", "small", "data", "generation", "distill"))
    step("distill", run_dir.distill, h_distill, lambda: _stage("distill").run(cfg, run_dir))

    refine_cfg, h_search = cfg, None
    if cfg.search.enabled:
        h_search = chain_hash("search", h_distill, cfg.section_hash("large", "generation", "refine", "search"))
        step("search", run_dir.search, h_search, lambda: _stage("search").run(cfg, run_dir))
        if run_dir.best_reward_weights.is_file():
            best = load_config(run_dir.best_reward_weights)
            refine_cfg = replace(cfg, refine=replace(cfg.refine, reward_weights=best.refine.reward_weights))
    h_refine = chain_hash("refine", h_distill, h_search,
                          refine_cfg.section_hash("seed", "large", "generation", "refine"))
    step("refine", run_dir.refine, h_refine, lambda: _stage("refine").run(refine_cfg, run_dir))

    evaluator = None  # opened at the first evaluation that has to run: a rerun loads no model

    def run_eval(ecfg: Config, judge: bool) -> dict:
        nonlocal evaluator
        evaluator = evaluator or evaluate.open_evaluator(ecfg)
        return evaluator.evaluate(ecfg, run_dir, judge)

    model_hash = {str(run_dir.distill_model): h_distill, str(run_dir.refine_model): h_refine, None: None}
    eval_inputs = cfg.section_hash("data", "large", "generation")
    try:
        for label, method, k, small_path in eval_plan(cfg, run_dir):
            ecfg = evaluate.with_small_lm(
                replace(cfg, eval=replace(cfg.eval, method=method, self_consistency=k, label=label)), small_path)
            h = chain_hash("eval", label, method, k, cfg.eval.limit, eval_inputs, model_hash[small_path])
            step(label, run_dir.eval_dir(label), h,
                 lambda: run_eval(ecfg, cfg.pipeline.judge_rationales and k == 1))  # noqa: B023 (called at once)
    finally:
        if evaluator is not None:
            evaluator.close()

    report = write_report(run_dir, order=[label for label, *_ in eval_plan(cfg, run_dir)], notes=[
        f"Small LM `{cfg.small.name_or_path}`, large LM `{cfg.large.name_or_path}`; "
        f"self-consistency rows use k={cfg.pipeline.self_consistency}; "
        f"reward weights {dict(refine_cfg.refine.reward_weights)}.", "",
    ])
    log.info("report written to %s", report)
    return {"report": str(report), "steps": step.status}
