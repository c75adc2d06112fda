"""Reward-weight search on Ray Tune: four trials, an interrupted driver, the best-weights config.

Real parts only: a local 2-CPU Ray cluster, Tune with ASHA, each trial refining a tiny
distilled T5 with the refinement stage (Ray Train worker + DeepSpeed, the large LM in a
judge actor) and evaluating LM-guided CoT on dev questions, a search driver killed with
SIGKILL and restored. Refinement is made as small as it goes (one worker, one prompt of
two rollouts per step, one step and one round per trial), two trials run at once, and
the driver is killed once the first two have finished, so the restored search has two
trials left and little work is done twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmcot.cli import main
from lmcot.config import ModelSpec, load_config
from lmcot.models.loading import load_model
from lmcot.runs.rundir import RunDir
from lmcot.runs.step import done as recorded_step
from lmcot.stages import refine, search

ROOT = Path(__file__).resolve().parents[2]

SETS = [
    "data.datasets=[{name: hotpotqa, format: hotpotqa, train_path: 'sample:hotpotqa_synthetic_train', "
    "dev_path: 'sample:hotpotqa_synthetic_dev'}]",
    "data.context_max_tokens=48", "generation.rationale_max_new_tokens=8", "generation.answer_max_new_tokens=4",
    "refine.scaling.num_workers=1", "refine.num_generations=2", "refine.prompts_per_step=1", "refine.beta=0.0",
    "refine.max_new_tokens=8", "refine.judge_batch_wait_ms=0", "refine.reward_weights={task: 1.0}",
    "search.space={task: [1.0], factuality: [0.0, 1.0], relevance: [0.0, 0.5]}", "search.num_samples=4",
    "search.rounds=1", "search.steps_per_round=1", "search.grace_period=1", "search.eval_limit=2",
    "search.max_concurrent_trials=2",
]


def distilled_run(root: Path) -> RunDir:
    """A run directory whose ``distill/model`` is a tiny T5 (what ``lmcot distill`` writes)."""
    run_dir = RunDir(root)
    lm = load_model(ModelSpec("tiny:t5-small"))
    lm.model.save_pretrained(run_dir.distill_model)
    lm.tokenizer.save_pretrained(run_dir.distill_model)
    return run_dir


# -- bad input: clear errors before Ray or any trial starts -------------------------------------
@pytest.mark.parametrize("override, message", [
    ("search.space={fluncy: [0, 1]}", "unknown reward 'fluncy' (did you mean 'fluency'?)"),
    ("search.space={fluency: [0.0, 0.5, 1.0]}", "set sampler=grid"),
    ("refine.aspect_mode=mean", "search.space with refine.reward_weights: aspect_mode=mean"),
    ("search.grace_period=4", "grace_period=4 must be <= rounds=1"),
])
def test_bad_search_config_is_refused_by_the_command(tmp_path, capsys, override, message):
    run_dir = distilled_run(tmp_path / "run")
    args = ["search", "--run-dir", str(run_dir.root), *[a for s in SETS for a in ("--set", s)], "--set", override]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not run_dir.search_tune.exists()


def test_missing_distilled_model_fails_before_ray_starts(tmp_path):
    import ray

    with pytest.raises(FileNotFoundError, match="lmcot distill"):
        search.run(load_config("tiny", SETS), RunDir(tmp_path / "empty"))
    assert not ray.is_initialized()


def test_trial_resources_reserve_the_judges_inside_the_trial():
    cfg = load_config("tiny", SETS)
    assert search.trial_resources(cfg).bundles == [{"memory": 1}]  # nothing of its own: a placeholder bundle
    gpu = load_config("tiny", [*SETS, "search.trial_gpus=1", "refine.judge_num_gpus=1", "refine.judge_num_actors=2"])
    assert search.trial_resources(gpu).bundles == [{"GPU": 1}, {"GPU": 1}, {"GPU": 1}]
    pinned = gpu.replace(large=dataclasses.replace(gpu.large, ray_resource="large_lm"))
    assert search.trial_resources(pinned).bundles == [{"GPU": 1, "large_lm": 0.001}] * 3


def test_each_round_starts_from_the_previous_rounds_model(tmp_path):
    distilled = tmp_path / "run" / "distill" / "model"
    distilled.mkdir(parents=True)
    trial = tmp_path / "run" / "search" / "trials" / "abc_00000"
    first = search.round_run_dir(trial, 1, distilled)
    second = search.round_run_dir(trial, 2, distilled)
    assert first.root == trial / "round-1" and second.root == trial / "round-2"
    assert first.distill_model.resolve() == distilled
    first.refine_model.mkdir(parents=True)
    assert second.distill_model.resolve() == first.refine_model
    assert not os.path.isabs(os.readlink(second.distill_model)), "relative: the run directory stays movable"
    assert search.round_run_dir(trial, 2, distilled).distill_model.resolve() == first.refine_model  # idempotent
    cfg = search.round_config(load_config("tiny", SETS), {"factuality": 0.5}, 2)
    assert cfg.refine.reward_weights == {"task": 1.0, "factuality": 0.5}
    assert cfg.refine.max_steps == 1 and cfg.refine.save_steps == 1 and cfg.seed == 1  # new questions each round


def test_a_search_with_another_config_is_archived_not_mixed_in(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    cfg = load_config("tiny", SETS)
    assert search.archive_if_changed(cfg, run_dir) is None  # a fresh search: its config is recorded
    run_dir.search_tune.mkdir()
    run_dir.search_trials_md.write_text("old")
    assert search.archive_if_changed(cfg, run_dir) is None  # the same config resumes
    more = load_config("tiny", [*SETS, "search.max_concurrent_trials=1", "search.enabled=true"])
    assert search.archive_if_changed(more, run_dir) is None  # how to run it is not what is searched
    moved = search.archive_if_changed(load_config("tiny", [*SETS, "search.seed=1"]), run_dir)
    assert moved.parent == run_dir.search / "archive"
    assert (moved / run_dir.search_tune.name).is_dir() and (moved / run_dir.search_trials_md.name).read_text() == "old"
    assert not run_dir.search_tune.exists() and not run_dir.search_trials_md.exists()
    assert json.loads(run_dir.search_inputs.read_text())["search"]["seed"] == 1
    judges = load_config("tiny", [*SETS, "search.seed=1", "refine.judge_num_cpus=1", "refine.scaling.max_failures=0"])
    assert search.search_identity(judges, run_dir) == search.search_identity(
        load_config("tiny", [*SETS, "search.seed=1"]), run_dir), "run-only refine fields do not change the search"


# -- the search on Ray Tune ------------------------------------------------------------------
def trial_statuses(tune_dir: Path) -> dict[str, str]:
    """Trial id -> status, as Tune's last experiment-state snapshot records it."""
    from ray.tune import ExperimentAnalysis

    try:
        return {t.trial_id: t.status for t in ExperimentAnalysis(str(tune_dir)).trials}
    except Exception:  # not written yet, or being replaced right now
        return {}


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(2)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def rounds_reported(tune_dir: Path, trial_id: str) -> list[int]:
    lines = (tune_dir / trial_id / RunDir.TUNE_RESULT).read_text().splitlines()
    return [json.loads(line)["round"] for line in lines if line.strip()]


@pytest.mark.ray
@pytest.mark.slow
def test_four_trials_survive_a_killed_driver_and_the_best_weights_are_refined(ray_cluster, tmp_path):
    run_dir = distilled_run(tmp_path / "run")
    cfg = load_config("tiny", SETS)
    tune_dir = run_dir.search_tune
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(
            [sys.executable, "jobs/search_reward_weights.py", "--config", "tiny", "--run-dir", str(run_dir.root),
             *[a for s in SETS for a in ("--set", s)]],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: list(trial_statuses(tune_dir).values()).count("TERMINATED") >= 2 or driver.poll() is not None,
                 600, "two finished trials")
    finally:
        driver.kill()  # SIGKILL: no cleanup runs, as in a crash
        driver.wait(timeout=30)
    assert driver.returncode == -signal.SIGKILL, f"the driver ended by itself:\n{log.read_text()[-3000:]}"
    finished = [t for t, status in trial_statuses(tune_dir).items() if status == "TERMINATED"]
    assert finished  # (usually some trials are still running: the restore must finish them)
    before = {t: (tune_dir / t / RunDir.TUNE_RESULT).read_bytes() for t in finished}
    models = {t: [(p, p.stat().st_mtime_ns) for p in sorted((run_dir.search / "trials" / t).glob("round-*/refine/model/*"))]
              for t in finished}

    out = search.run(cfg, run_dir)  # same command again: restores the search

    statuses = trial_statuses(tune_dir)
    assert len(statuses) == 4 and set(statuses.values()) == {"TERMINATED"}
    for t in finished:  # finished trials were not run again
        assert (tune_dir / t / RunDir.TUNE_RESULT).read_bytes() == before[t]
        assert [(p, p.stat().st_mtime_ns) for p, _ in models[t]] == models[t]
    md = run_dir.search_trials_md.read_text()
    for t in statuses:
        assert rounds_reported(tune_dir, t) == [1]
        trial_root = run_dir.search / "trials" / t
        assert (trial_root / "round-1" / "distill" / "model").resolve() == run_dir.distill_model
        assert (trial_root / "round-1" / "refine" / "model" / "config.json").is_file()
        assert not (trial_root / "round-1" / "refine" / "checkpoints").exists(), "kept only the round's model"
        assert json.loads(RunDir(trial_root / "round-1").eval_aspects(search.EVAL_LABEL).read_text())
        assert list((tune_dir / t).glob("events.out.tfevents.*")), "TensorBoard event files"
    assert out["trials"] == 4 and out["errored"] == 0 and out["best_trial"] in statuses
    weights = out["best_reward_weights"]
    assert weights["task"] == 1.0 and 0 <= weights["factuality"] <= 1 and 0 <= weights["relevance"] <= 0.5
    result = json.loads((tune_dir / out["best_trial"] / RunDir.TUNE_RESULT).read_text().splitlines()[-1])
    assert result["weight_factuality"] == weights["factuality"] and 0 < result["quality"] < 1

    assert sum(line.startswith(f"| {t} |") for t in statuses for line in md.splitlines()) == 4
    assert "**best**" in md
    assert run_dir.search_pareto.read_bytes()[:4] == b"\x89PNG"

    # the best-weights file is a full config that refinement accepts as it is
    best = load_config(run_dir.best_reward_weights)
    assert best.refine.reward_weights == weights and best.data == cfg.data and not best.search.enabled
    prep = refine.prepare(best, run_dir)
    assert prep["plan"] == {k: v for k, v in weights.items() if v != 0}

    # run alone, the search records its step, which `lmcot run` then skips (the pipeline's rule)
    assert recorded_step(run_dir.search, search.search_identity(cfg, run_dir))["trials"] == 4

    # the same command once more finds every trial done
    again = search.run(cfg, run_dir)
    assert again["best_trial"] == out["best_trial"] and again["trials"] == 4
