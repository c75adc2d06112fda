"""Evaluation on the cluster (``eval.on_cluster``): what a GPU cluster's jobs use, since
their drivers run on a CPU-only head. Real parts: a local 2-CPU Ray cluster, the tiny
models loaded in an evaluation actor, the same run-directory outputs as in-process.
"""

import json
import time

import pytest

from lmcot.config import load_config
from lmcot.runs.rundir import RunDir
from lmcot.stages import evaluate

pytestmark = pytest.mark.ray

SETS = ["eval.limit=2", "eval.method=lm_guided"]


def _outputs(run_dir: RunDir, label: str) -> tuple[dict, dict]:
    return json.loads(run_dir.eval_predictions(label).read_text()), json.loads(run_dir.eval_metrics(label).read_text())


def test_on_cluster_evaluates_in_an_actor_with_the_same_results(ray_cluster, tmp_path, monkeypatch):
    import torch

    here = RunDir(tmp_path / "here")
    there = RunDir(tmp_path / "there")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the 1-CPU actor: the same reduction order, the same greedy tokens
    try:
        evaluate.run(load_config("tiny", SETS), here)
    finally:
        torch.set_num_threads(threads)

    def no_model_in_the_driver(*args, **kwargs):
        raise AssertionError("eval.on_cluster loaded a model in the driver")

    monkeypatch.setattr(evaluate, "make_generator", no_model_in_the_driver)  # the actor's process is untouched
    evaluate.run(load_config("tiny", [*SETS, "eval.on_cluster=true", "eval.num_cpus=1"]), there)

    (pred_here, metrics_here), (pred_there, metrics_there) = _outputs(here, "lm_guided"), _outputs(there, "lm_guided")
    answers = pred_here["answer"]
    assert len(answers) == 4 and all(answers.values()), "2 questions of each dataset, each answered with text"
    assert pred_there == pred_here  # greedy decoding: the same answers wherever it runs
    # the tiny models score 0 either way: the per-question token counts (the prompts as the actor
    # fitted them, the tokens it generated) are what tells the two runs apart if anything differs
    assert metrics_there["datasets"]["hotpotqa"]["small_prompt_tokens_per_question"] > 0
    assert metrics_there == metrics_here
    deadline = time.monotonic() + 30  # ray.kill releases the actor's CPU asynchronously
    while ray_cluster.available_resources().get("CPU") != 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_cluster.available_resources().get("CPU") == 2  # the actor was released


def test_on_cluster_asking_more_than_the_cluster_has_names_the_fields(ray_cluster, tmp_path):
    cfg = load_config("tiny", [*SETS, "eval.on_cluster=true", "eval.num_gpus=1"])
    with pytest.raises(ValueError, match=r"1 GPU.*eval.num_cpus / num_gpus"):
        evaluate.run(cfg, RunDir(tmp_path / "run"))
    assert not (tmp_path / "run" / "eval").exists()


def test_a_model_pinned_to_a_missing_group_is_named(ray_cluster, tmp_path, monkeypatch):
    cfg = load_config("tiny", [*SETS, "eval.on_cluster=true", "large.ray_resource=large_lm", "eval.start_timeout_s=3"])
    with pytest.raises(ValueError, match="large_lm"):
        evaluate.run(cfg, RunDir(tmp_path / "run"))
    # On a remote cluster the check only warns (an autoscaler may add the group), so the actor
    # waits to be placed: bounded by eval.start_timeout_s, then an error naming the fields.
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.get_runtime_context().gcs_address)
    with pytest.raises(TimeoutError, match=r"eval.start_timeout_s=3 s.*large.ray_resource='large_lm'"):
        evaluate.run(cfg, RunDir(tmp_path / "run"))
    assert not (tmp_path / "run" / "eval").exists()


def test_missing_resources_fail_locally_and_only_warn_on_a_remote_cluster(ray_cluster, monkeypatch, caplog):
    from lmcot.planning.resources import Need
    from lmcot.stages.cluster import require_resources

    need = Need({"CPU": 1, "large_lm": 0.001}, "the eval actor", "clear large.ray_resource")
    with pytest.raises(ValueError, match=r"^the eval actor; that needs 0.001 large_lm but the Ray cluster has 0 "
                                         r"large_lm: clear large.ray_resource$"):
        require_resources(need)
    # A remote cluster (RAY_ADDRESS) may still grow through its autoscaler: warn and go on.
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.get_runtime_context().gcs_address)
    with caplog.at_level("WARNING", logger="lmcot.stages.cluster"):
        require_resources(need)
    assert "waiting for the cluster to grow" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="lmcot.stages.cluster"):  # exactly what the cluster has, remote too
        assert require_resources(Need({"CPU": 2}, "fits", "nothing")) is None
    assert not caplog.records, "a need the cluster meets passes silently"
    monkeypatch.delenv("RAY_ADDRESS")
    require_resources(Need({"CPU": 2}, "fits", "nothing"))  # locally too: no error
    with pytest.raises(ValueError, match=r"that needs 2\.5 CPU but the Ray cluster has 2 CPU"):
        require_resources(Need({"CPU": 2.5}, "half a CPU too many", "fewer"))


def test_the_local_cluster_quiets_only_the_placement_group_cleaners_log(ray_cluster):
    """Ray Train's cleaner polls the state API every second, which a cluster without the
    dashboard lacks: its warning would flood a training run's console. Its logger is at ERROR
    in every worker, a detached actor started by another actor (as the cleaner is) too."""
    import logging

    from lmcot.stages.cluster import QUIETED_LOGGERS

    @ray_cluster.remote(num_cpus=0)
    class Levels:
        def of(self, names):
            return [logging.getLogger(n).getEffectiveLevel() for n in names]

        def of_a_detached_child(self, names):
            child = Levels.options(lifetime="detached").remote()
            try:
                return ray_cluster.get(child.of.remote(names))
            finally:
                ray_cluster.kill(child)

    names = [*QUIETED_LOGGERS, "ray.train.v2._internal.execution.controller.controller"]
    actor = Levels.remote()
    for levels in (ray_cluster.get(actor.of.remote(names)), ray_cluster.get(actor.of_a_detached_child.remote(names))):
        assert levels[:-1] == [logging.ERROR] * len(QUIETED_LOGGERS)
        assert levels[-1] < logging.ERROR, "the other Ray Train logs still reach the console"
    ray_cluster.kill(actor)
