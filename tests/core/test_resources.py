"""Resource planning as arithmetic on the config (no Ray): what every actor and worker asks for."""

import pytest

from lmcot.config import load_config
from lmcot.planning.resources import (add_resources, eval_need, refine_need, search_need, short_of, teacher_actor_options,
                             teacher_need, training_need, trial_bundles)


def test_training_workers_with_gpus_and_a_pinned_group():
    cfg = load_config("tiny", ["distill.scaling.num_workers=4", "distill.scaling.cpus_per_worker=2",
                               "distill.scaling.use_gpu=true", "small.ray_resource=small_lm"])
    need = training_need(cfg, "distill")
    assert need.resources == {"CPU": 8.0, "GPU": 4, "small_lm": 0.004}
    assert "4 workers" in need.what and "small.ray_resource" in need.fix and "use_gpu" in need.fix


def test_refinement_holds_its_workers_and_its_judges():
    cfg = load_config("tiny", ["refine.scaling.num_workers=2", "refine.scaling.use_gpu=true",
                               "refine.judge_num_actors=2", "refine.judge_num_gpus=1", "refine.judge_num_cpus=4",
                               "large.ray_resource=large_lm"])
    assert refine_need(cfg).resources == {"CPU": 10.0, "GPU": 4.0, "large_lm": 0.002}
    # a search runs that twice over, plus each trial's own evaluation process
    two = cfg.replace(search=cfg.search.__class__(max_concurrent_trials=2, trial_cpus=1, trial_gpus=1))
    assert search_need(two).resources == {"CPU": 22.0, "GPU": 10.0, "large_lm": 0.006}


def test_trial_bundles_put_the_judges_inside_the_trial():
    cfg = load_config("tiny", ["search.trial_gpus=1", "refine.judge_num_gpus=1", "refine.judge_num_actors=2"])
    assert trial_bundles(cfg) == [{"GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0}]
    assert trial_bundles(load_config("tiny")) == [{"memory": 1}]  # never an empty placement group


def test_evaluation_and_teacher_actors():
    assert eval_need(load_config("tiny")).resources == {}  # evaluates in the calling process
    on = load_config("tiny", ["eval.on_cluster=true", "eval.num_gpus=1", "large.ray_resource=large_lm"])
    assert eval_need(on).resources == {"CPU": 1.0, "GPU": 1.0, "large_lm": 0.001}
    teacher = load_config("tiny", ["rationales.num_actors=3", "rationales.gpus_per_actor=0.5"])
    assert teacher_actor_options(teacher) == {"num_cpus": 1.0, "num_gpus": 0.5, "resources": None}
    assert teacher_need(teacher).resources == {"CPU": 3.0, "GPU": 1.5}


@pytest.mark.parametrize("need, have, short", [
    ({"CPU": 2.0}, {"CPU": 2.0}, {}),
    ({"CPU": 2.5}, {"CPU": 2.0}, {"CPU": 2.5}),
    ({"GPU": 0.0, "CPU": 1}, {"CPU": 1.0}, {}),
    ({"large_lm": 0.001}, {}, {"large_lm": 0.001}),
])
def test_short_of(need, have, short):
    assert short_of(need, have) == short


def test_add_resources_sums_and_multiplies():
    assert add_resources({"CPU": 1}, {"CPU": 2, "GPU": 1}, times=3) == {"CPU": 9, "GPU": 3}
    assert add_resources() == {}
