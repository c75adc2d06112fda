"""Reward-weight search on Ray Tune: which balance of rationale and task rewards gives the best answers?

``lmcot search`` / ``jobs/search_reward_weights.py`` runs ``search.num_samples`` trials
(times the grid with ``search.sampler: grid``), each with reward weights drawn from
``search.space`` over ``refine.reward_weights``. A trial is a Tune *function trainable*
(Ray 2.60's Train V2 ``TorchTrainer`` cannot be handed to a ``Tuner``; the trial calls
the refinement stage, whose ``trainer.fit()`` runs inside it) that works in rounds:

1. refine for ``search.steps_per_round`` steps with the trial's weights
   (``lmcot.stages.refine.run``, its own workers and judge actors);
2. evaluate LM-guided CoT with the refined small LM on ``search.eval_limit`` dev
   questions per dataset, the large LM also judging the rationales
   (``lmcot.stages.evaluate.run(..., judge_aspects=True)``);
3. report ``f1`` (mean over datasets), ``quality`` (mean aspect score), the weights
   and ``round`` to Tune, with a small checkpoint (the round reached).

ASHA (``time_attr="round"``) stops the trials whose F1 falls behind at each rung.

Rounds. A refinement run's identity (its checkpoint folder name) includes
``refine.max_steps``, so rerunning refinement with a larger ``max_steps`` starts a new
run from the distilled model rather than resuming. Each round therefore refines its own
run directory ``RUN/search/trials/<trial>/round-<r>/``, whose ``distill/model`` links
to the previous round's ``refine/model`` (round 1: to ``RUN/distill/model``). A round
thus continues the previous round's weights, with a fresh optimizer and its KL
reference at the previous round's model, and draws new questions (seed + round).
Finished rounds keep their exported model and drop their training checkpoints.

Outputs under ``RUN/search/``: ``tune/`` (Tune's storage: per-trial ``result.json``,
``progress.csv`` and TensorBoard event files, viewable with ``tensorboard --logdir
RUN/search/tune``), ``trials/`` (the trials' run directories), ``trials.md``,
``pareto.png`` and ``best_reward_weights.yaml`` (a full config that ``lmcot refine
--config`` accepts as it is; ``lmcot run`` takes its ``refine.reward_weights``).

Resume. Rerunning the same command after an interruption restores the experiment
(``Tuner.restore(..., resume_errored=True)``): finished trials are not rerun, an
interrupted trial continues after its last reported round (and inside a round,
refinement resumes from its own checkpoint). A search started with another config is
not mixed into a new one: it moves to ``RUN/search/archive/<time>/`` first.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from lmcot.config import Config, EvalConfig, fingerprint_dict, from_dict, identity, to_dict
from lmcot.runs import step
from lmcot.runs.evals import read_aspects
from lmcot.runs.jsonl import load_jsonl
from lmcot.runs.rundir import RunDir, write_atomic, write_json
from lmcot.training.search_space import (
    TrialResult,
    best_trial,
    best_weights_yaml,
    check_space,
    num_trials,
    parse_space,
    plot_pareto,
    render_trials_md,
    trial_weights,
)

log = logging.getLogger(__name__)

EVAL_LABEL = "dev"


# -- driver --------------------------------------------------------------------------------
def check(cfg: Config, run_dir: RunDir) -> list:
    """Every check that can fail before Ray starts: space, weights, distilled model, training rows."""
    from lmcot.stages import refine

    sc = cfg.search
    dims = parse_space(sc.space, sc.sampler)
    check_space(dims, cfg.refine.reward_weights, cfg.refine.aspect_mode, cfg.refine.quality_aspects)
    if not RunDir.has_model(run_dir.distill_model):
        raise FileNotFoundError(
            f"search refines the distilled small LM, but {run_dir.distill_model} holds no model (config.json): "
            f"run `lmcot distill --run-dir {run_dir.root}` first")
    if not cfg.data.datasets:
        raise ValueError("search evaluates on the dev split of data.datasets, which is empty")
    # refinement's own checks (family, ZeRO stage, training rows) with a round's settings
    refine.prepare(round_config(cfg, {d.name: 1.0 for d in dims}, 1), run_dir)
    return dims


def round_config(cfg: Config, weights: dict[str, float], round_: int) -> Config:
    """The refinement config of one round: the trial's weights, ``steps_per_round`` steps, a seed per round."""
    sc, rc = cfg.search, cfg.refine
    steps = sc.steps_per_round
    return cfg.replace(seed=cfg.seed + round_ - 1, refine=replace(
        rc, reward_weights=trial_weights(rc.reward_weights, weights), max_steps=steps,
        save_steps=min(rc.save_steps, steps)))


def trial_resources(cfg: Config):
    """The trial's placement group (:func:`lmcot.planning.resources.trial_bundles`)."""
    from ray import tune

    from lmcot.planning.resources import trial_bundles

    return tune.PlacementGroupFactory(trial_bundles(cfg))


def inputs(cfg: Config, run_dir: RunDir) -> dict:
    """What a search reads, as plain data (run-only fields such as concurrency and trial
    resources left out: changing them neither refuses a resume nor reruns the search)."""
    return fingerprint_dict(cfg.sections("seed", "small", "large", "data", "generation", "refine", "search")
                            | {"distilled": run_dir.model_identity("distill")})


def search_identity(cfg: Config, run_dir: RunDir) -> str:
    """The search's identity (:func:`lmcot.config.identity` of :func:`inputs`)."""
    return identity(inputs(cfg, run_dir))


def archive_if_changed(cfg: Config, run_dir: RunDir) -> Path | None:
    """Keep a search started with another config out of this one: move it to ``RUN/search/archive/``.

    Returns the archive folder (None when there was nothing to move). Records the
    config of the search about to run, so that the next call can tell.
    """
    path = run_dir.search_inputs
    now = inputs(cfg, run_dir)
    before = json.loads(path.read_text()) if path.is_file() else now
    changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
    moved = None
    if changed and run_dir.search_tune.exists():
        moved = run_dir.search_archive / time.strftime("%Y%m%d-%H%M%S")
        moved.mkdir(parents=True)
        for output in run_dir.search_outputs():
            if output.exists():
                os.replace(output, moved / output.name)
        log.warning("search: %s holds a search started with a different config (changed: %s); moved it to %s "
                    "and starting a new search", run_dir.search, ", ".join(changed), moved)
    write_json(path, now)
    return moved


def param_space(dims, sampler: str) -> dict:
    """Tune's search space: ``{"weights": {reward: value | tune.uniform | tune.grid_search}}``."""
    from ray import tune

    space = {}
    for d in dims:
        if d.kind == "fixed":
            space[d.name] = d.values[0]
        elif d.kind == "uniform":
            space[d.name] = tune.uniform(*d.values)
        else:
            space[d.name] = tune.grid_search(list(d.values))
    return {"weights": space}


def trial_dirname(trial) -> str:
    """Tune's folder of a trial: its id, as in ``RUN/search/trials/<id>/``."""
    return trial.trial_id


def make_tuner(cfg: Config, run_dir: RunDir, dims):
    """A fresh ``Tuner``, or the interrupted one restored from ``RUN/search/tune``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    sc = cfg.search
    path = run_dir.search_tune
    trainable = tune.with_resources(
        tune.with_parameters(trial, cfg_raw=to_dict(cfg), trials_root=str(run_dir.search_trials),
                             distill_model=str(run_dir.distill_model)),
        trial_resources(cfg))
    if tune.Tuner.can_restore(str(path)):
        log.info("search: resuming the search in %s (finished trials are kept)", path)
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    scheduler = ASHAScheduler(time_attr="round", max_t=sc.rounds, grace_period=sc.grace_period,
                              reduction_factor=sc.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space=param_space(dims, sc.sampler),
        tune_config=tune.TuneConfig(
            metric="f1", mode="max", num_samples=sc.num_samples, scheduler=scheduler,
            # max_concurrent_trials would be ignored next to a SearchGenerator: the generator limits it
            search_alg=BasicVariantGenerator(random_state=sc.seed, max_concurrent=sc.max_concurrent_trials),
            trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=run_dir.search_tune.name, storage_path=str(run_dir.search_tune.parent),
            failure_config=tune.FailureConfig(max_failures=1),
            # trial checkpoints are one small JSON file each: keep them all (num_to_keep forces
            # an experiment snapshot at every report)
            checkpoint_config=tune.CheckpointConfig()),
    )


def collect(result_grid, base_weights: dict) -> list[TrialResult]:
    """One :class:`TrialResult` per trial, from Tune's results (history from each ``result.json``)."""
    trials = []
    for result in result_grid:
        trial_id = Path(result.path).name
        history = [h for h in load_jsonl(Path(result.path) / RunDir.TUNE_RESULT) if "round" in h]
        last = history[-1] if history else {}
        trials.append(TrialResult(
            trial_id=trial_id, weights=trial_weights(base_weights, (result.config or {}).get("weights", {})),
            rounds=int(last.get("round", 0)), f1=last.get("f1"), quality=last.get("quality"),
            status="ERROR" if result.error else "TERMINATED", error=str(result.error or "")[:500],
            history=[{k: h[k] for k in ("round", "f1", "quality") if k in h} for h in history]))
    return trials


def write_outputs(cfg: Config, run_dir: RunDir, trials: list[TrialResult]) -> TrialResult | None:
    """``trials.md``, ``pareto.png`` and (when a trial reported) ``best_reward_weights.yaml``."""
    sc = cfg.search
    best = best_trial(trials, sc.rounds)
    write_atomic(run_dir.search_trials_md, render_trials_md(
        trials, max_rounds=sc.rounds, best_id=best.trial_id if best else None, steps_per_round=sc.steps_per_round))
    plot_pareto(trials, run_dir.search_pareto, best_id=best.trial_id if best else None)
    if best is not None:
        write_atomic(run_dir.best_reward_weights, best_weights_yaml(cfg, best, max_rounds=sc.rounds))
    return best


def run(cfg: Config, run_dir: RunDir) -> dict:
    """Search the reward weights; returns the best trial, its weights and where the reports are,
    recorded as the search step with :func:`search_identity` (``lmcot run`` then reuses it)."""
    from lmcot.planning.resources import search_need
    from lmcot.stages.cluster import ensure_ray, require_resources

    dims = check(cfg, run_dir)
    sc = cfg.search
    ensure_ray()
    require_resources(search_need(cfg))
    archive_if_changed(cfg, run_dir)
    log.info("search: %d trials x up to %d rounds of %d refinement steps, space %s (%s), ASHA grace %d, "
             "reduction %d; Tune storage %s (tensorboard --logdir %s)", num_trials(dims, sc.sampler, sc.num_samples),
             sc.rounds, sc.steps_per_round, dict(sc.space), sc.sampler, sc.grace_period, sc.reduction_factor,
             run_dir.search_tune, run_dir.search_tune)
    started = time.time()
    result_grid = make_tuner(cfg, run_dir, dims).fit()
    trials = collect(result_grid, dict(cfg.refine.reward_weights))
    best = write_outputs(cfg, run_dir, trials)
    errors = [t for t in trials if t.status == "ERROR"]
    for t in errors:
        log.warning("search: trial %s failed: %s", t.trial_id, t.error)
    if best is None:
        raise RuntimeError(f"no search trial reported a result ({len(errors)} of {len(trials)} failed); "
                           f"first error: {errors[0].error if errors else 'none'}")
    log.info("search: best trial %s (F1 %.4f, quality %.4f) weights %s -> %s", best.trial_id, best.f1,
             best.quality or 0.0, best.weights, run_dir.best_reward_weights)
    summary = {"best_trial": best.trial_id, "best_reward_weights": best.weights, "f1": best.f1,
               "quality": best.quality, "trials": len(trials), "errored": len(errors),
               "stopped_early": sum(t.stopped_early(sc.rounds) for t in trials),
               "best_config": str(run_dir.best_reward_weights), "trials_md": str(run_dir.search_trials_md),
               "pareto": str(run_dir.search_pareto), "tune": str(run_dir.search_tune),
               "wall_s": round(time.time() - started, 1)}
    step.record(run_dir.search, "search", search_identity(cfg, run_dir), summary)
    return summary


# -- inside each Tune trial ------------------------------------------------------------------
def trial(config: dict, *, cfg_raw: dict, trials_root: str, distill_model: str) -> None:
    """One trial: rounds of refinement + dev evaluation, each reported to Tune (and ASHA)."""
    from ray import tune

    logging.basicConfig(level=os.environ.get("LMCOT_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s")
    cfg = from_dict(cfg_raw, "search trial")
    sc = cfg.search
    weights = dict(config["weights"])
    root = RunDir.search_trial(Path(trials_root), tune.get_context().get_trial_id())
    done = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            done = json.loads((Path(d) / RunDir.TRIAL_STATE).read_text())["round"]
        log.info("search trial %s: resuming after round %d", root.name, done)
    for r in range(done + 1, sc.rounds + 1):
        metrics = run_round(cfg, round_run_dir(root, r, Path(distill_model)), weights, r)
        with tempfile.TemporaryDirectory(prefix="lmcot-search-") as tmp:
            write_json(Path(tmp) / RunDir.TRIAL_STATE, metrics)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def round_run_dir(trial_root: Path, r: int, distill_model: Path) -> RunDir:
    """``<trial>/round-<r>/``, its ``distill/model`` linked to where round ``r`` starts from:
    the distilled model for round 1, the previous round's refined model after that."""
    round_dir = RunDir.trial_round(trial_root, r)
    link(round_dir.distill_model, distill_model if r == 1 else RunDir.trial_round(trial_root, r - 1).refine_model)
    return round_dir


def run_round(cfg: Config, round_dir: RunDir, weights: dict[str, float], r: int) -> dict:
    """Refine one round, drop its training checkpoints, evaluate; the metrics to report."""
    from lmcot.stages import evaluate, refine

    rcfg = round_config(cfg, weights, r)
    summary = refine.run(rcfg, round_dir)
    shutil.rmtree(round_dir.refine_checkpoints, ignore_errors=True)  # the next round starts from the model
    ecfg = evaluate.with_small_lm(cfg.replace(eval=EvalConfig(
        method="lm_guided", self_consistency=1, limit=cfg.search.eval_limit, label=EVAL_LABEL)),
        str(round_dir.refine_model))
    ev = evaluate.run(ecfg, round_dir, judge_aspects=True)
    f1s = {name: m["f1"] for name, m in ev["datasets"].items()}
    aspects = read_aspects(round_dir.eval_dir(EVAL_LABEL)) or {}
    metrics = {
        "round": r, "steps": r * cfg.search.steps_per_round,
        "f1": sum(f1s.values()) / len(f1s),
        "quality": sum(aspects.values()) / len(aspects) if aspects else 0.0,
        **{f"f1_{name}": v for name, v in f1s.items()},
        **{f"aspect_{name}": v for name, v in aspects.items()},
        **{f"weight_{name}": v for name, v in rcfg.refine.reward_weights.items()},
    }
    for key in ("reward_first", "reward_last"):
        if isinstance(summary.get(key), (int, float)):
            metrics[f"refine_{key}"] = summary[key]
    return metrics


def link(path: Path, target: Path) -> None:
    """``path`` -> ``target`` as a relative symlink (the run directory stays movable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(target, path.parent)
    if path.is_symlink() and os.readlink(path) == rel:
        return
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(rel, target_is_directory=True)
