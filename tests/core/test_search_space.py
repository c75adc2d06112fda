"""The Ray-free half of the reward-weight search: space, checks, best trial, Pareto front, reports."""

from __future__ import annotations

import pytest

from lmcot.config import ConfigError, load_config
from lmcot.training.search_space import (
    Dim,
    TrialResult,
    best_trial,
    best_weights_yaml,
    check_reward_config,
    check_space,
    grid_points,
    num_trials,
    parse_space,
    pareto_front,
    plot_pareto,
    render_trials_md,
    trial_weights,
)


# -- space ------------------------------------------------------------------------------------
def test_space_parses_fixed_uniform_and_grid():
    dims = parse_space({"task": [1.0], "fluency": [0.0, 0.5]}, "random")
    assert dims == [Dim("task", "fixed", (1.0,)), Dim("fluency", "uniform", (0.0, 0.5))]
    grid = parse_space({"task": [1.0], "fluency": [0.0, 0.5, 1.0], "relevance": [0.1, 0.2]}, "grid")
    assert [d.kind for d in grid] == ["fixed", "grid", "grid"]
    assert num_trials(grid, "grid", 2) == 12 and num_trials(dims, "random", 5) == 5
    points = grid_points(grid)
    assert len(points) == 6 and points[0] == {"task": 1.0, "fluency": 0.0, "relevance": 0.1}
    assert len({tuple(p.values()) for p in points}) == 6


@pytest.mark.parametrize("space, sampler, message", [
    ({}, "random", "space is empty"),
    ({"fluncy": [0.0, 1.0]}, "random", "unknown reward 'fluncy' (did you mean 'fluency'?)"),
    ({"fluency": []}, "random", "space.fluency is empty"),
    ({"fluency": [1.0, 0.0]}, "random", "low < high"),
    ({"fluency": [0.5, 0.5]}, "random", "low < high"),
    ({"fluency": [0.0, 0.5, 1.0]}, "random", "set sampler=grid"),
    ({"fluency": [0.0, 0.0]}, "grid", "repeats a value"),
    ({"fluency": [0.0, float("nan")]}, "random", "finite"),
])
def test_space_errors_name_the_entry_and_the_fix(space, sampler, message):
    with pytest.raises(ValueError) as exc:
        parse_space(space, sampler)
    assert message in str(exc.value)


def test_space_is_checked_against_refine_reward_rules():
    # aspect_mode=mean wants one 'quality' weight, not single aspects
    with pytest.raises(ValueError, match="search.space with refine.reward_weights: aspect_mode=mean"):
        check_space(parse_space({"fluency": [0.0, 1.0]}), {"task": 1.0}, "mean")
    check_space(parse_space({"quality": [0.0, 1.0]}), {"task": 1.0}, "mean", ["fluency"])
    with pytest.raises(ValueError, match="quality_aspects names unknown aspect"):
        check_space(parse_space({"quality": [0.0, 1.0]}), {"task": 1.0}, "mean", ["fluent"])
    # a grid trial with every weight zero would be refused by refinement
    with pytest.raises(ValueError, match="all zero"):
        check_space(parse_space({"task": [0.0, 1.0], "fluency": [0.0, 0.5]}, "grid"), {}, "weighted")
    check_space(parse_space({"task": [0.0, 1.0], "fluency": [0.5, 1.0]}, "grid"), {}, "weighted")
    check_space(parse_space({"task": [0.0, 1.0]}, "grid"), {"degenerate": 0.5}, "weighted")  # a fixed non-zero
    check_space(parse_space({"task": [0.0, 1.0]}, "random"), {}, "weighted")  # a range is never exactly 0


def test_trial_weights_overlay_the_base_weights():
    assert trial_weights({"task": 1.0, "fluency": 0.1}, {"fluency": 0.7}) == {"task": 1.0, "fluency": 0.7}


def test_search_config_validates_before_anything_starts():
    cfg = load_config("tiny", ["search.space={task: [1.0], fluency: [0, 1]}", "search.sampler=random"])
    assert cfg.search.space == {"task": (1.0,), "fluency": (0.0, 1.0)}
    check_reward_config(cfg)
    for override, message in (
        ("search.sampler=bayes", "sampler='bayes' is not one of random, grid"),
        ("search.grace_period=9", "grace_period=9 must be <= rounds=3"),
        ("search.reduction_factor=1", "reduction_factor must be >= 2"),
        ("search.num_samples=0", "num_samples must be >= 1"),
        ("search.trial_cpus=-1", "trial_cpus and trial_gpus must be >= 0"),
        ("search.space={fluency: 0.5}", "search.space.fluency: expected a list"),
    ):
        with pytest.raises(ConfigError) as exc:
            load_config("tiny", [override])
        assert message in str(exc.value), (override, str(exc.value))


@pytest.mark.parametrize("override, message", [
    ("search.space={fluncy: [0, 1]}", "search: space names unknown reward 'fluncy' (did you mean 'fluency'?)"),
    ("search.space={fluency: [0.0, 0.5, 1.0]}", "search: space.fluency has 3 values"),
    ("search.space={}", "search: space is empty"),
    ("refine.reward_weights={taks: 1.0}", "refine: reward_weights names unknown reward 'taks'"),
])
def test_reward_names_are_checked_with_the_section_before_a_stage(override, message):
    """The config loads (it knows no reward names); the check every stage command runs first refuses it."""
    cfg = load_config("tiny", [override])
    with pytest.raises(ConfigError) as exc:
        check_reward_config(cfg)
    assert message in str(exc.value)


# -- results ----------------------------------------------------------------------------------
def trials() -> list[TrialResult]:
    return [
        TrialResult("t0", {"task": 1.0, "fluency": 0.1}, 3, 0.40, 0.70),
        TrialResult("t1", {"task": 1.0, "fluency": 0.9}, 3, 0.50, 0.60),
        TrialResult("t2", {"task": 1.0, "fluency": 0.5}, 1, 0.90, 0.10),  # stopped early by ASHA
        TrialResult("t3", {"task": 1.0, "fluency": 0.3}, 3, 0.50, 0.65),
        TrialResult("t4", {"task": 1.0, "fluency": 0.2}, 0, None, None, status="ERROR", error="boom"),
        TrialResult("t5", {"task": 1.0, "fluency": 0.4}, 3, 0.30, 0.50),
    ]


def test_best_trial_prefers_finished_trials_then_f1_then_quality():
    assert best_trial(trials(), 3).trial_id == "t3"  # t1 and t3 tie on F1; t3 judged better; t2 stopped early
    assert best_trial([t for t in trials() if t.rounds == 1], 3).trial_id == "t2"  # none finished: best of the rest
    assert best_trial([trials()[4]], 3) is None
    assert best_trial([], 3) is None
    # exact ties fall back to the trial id, so the choice is deterministic
    tied = [TrialResult("b", {}, 2, 0.5, 0.5), TrialResult("a", {}, 2, 0.5, 0.5)]
    assert best_trial(tied, 2).trial_id == "a"


def test_pareto_front():
    assert pareto_front([]) == []
    assert pareto_front([(0.1, 0.1)]) == [0]
    points = [(t.f1, t.quality) for t in trials() if t.f1 is not None]  # t0 t1 t2 t3 t5
    assert pareto_front(points) == [0, 2, 3]  # t1 is dominated by t3 (same F1, lower quality); t5 by t0
    assert pareto_front([(0.5, 0.5), (0.5, 0.5)]) == [0, 1]


def test_trial_outcomes():
    t = trials()
    assert [x.outcome(3) for x in t] == ["completed", "completed", "stopped early (ASHA, round 1)", "completed",
                                         "error", "completed"]
    assert t[2].stopped_early(3) and not t[0].stopped_early(3) and not t[4].stopped_early(3)


def test_trials_md_has_one_row_per_trial():
    md = render_trials_md(trials(), max_rounds=3, best_id="t3", steps_per_round=4)
    rows = [line for line in md.splitlines() if line.startswith("| t") and not line.startswith("| trial")]
    assert len(rows) == 6
    header = next(line for line in md.splitlines() if line.startswith("| trial"))
    assert header.split("|")[2:4] == [" fluency ", " task "]
    assert "| t3 | 0.3 | 1 | 3 | 50.0 | 0.650 | completed | **best**, front |" in md
    assert "| t1 | 0.9 | 1 | 3 | 50.0 | 0.600 | completed |  |" in md
    assert "| t2 | 0.5 | 1 | 1 | 90.0 | 0.100 | stopped early (ASHA, round 1) | front |" in md
    assert "| t4 | 0.2 | 1 | 0 | - | - | error |  |" in md
    assert "up to 3 rounds of 4 refinement steps" in md


def test_pareto_plot_is_written(tmp_path):
    path = plot_pareto(trials(), tmp_path / "search" / "pareto.png", best_id="t3")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
    empty = plot_pareto([trials()[4]], tmp_path / "empty.png")
    assert empty.stat().st_size > 1_000


def test_best_weights_yaml_is_a_full_config_refine_accepts(tmp_path):
    cfg = load_config("tiny", ["search.enabled=true", "refine.max_steps=3"])
    best = TrialResult("abc_00001", {"task": 1.0, "factuality": 0.123456789}, 3, 0.25, 0.5)
    text = best_weights_yaml(cfg, best, max_rounds=3)
    assert text.startswith("# Best reward weights") and "trial abc_00001: 3/3 rounds, dev F1 25.00" in text
    path = tmp_path / "best_reward_weights.yaml"
    path.write_text(text)
    loaded = load_config(path)
    assert loaded.refine.reward_weights == {"task": 1.0, "factuality": 0.123456789}
    assert loaded.refine.max_steps == 3 and loaded.small == cfg.small and loaded.data == cfg.data
    assert not loaded.search.enabled  # the search is done: `lmcot run` with this file refines directly
