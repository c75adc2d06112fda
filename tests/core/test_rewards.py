"""Every reward, the batching of large-LM calls, the combination, and bad reward weights."""

import pytest

from lmcot.training import rewards
from lmcot.config import ConfigError, ModelSpec, load_config
from lmcot.models.generation import HFGenerator
from lmcot.scoring.metrics import answer_metrics
from lmcot.prompting.prompts import ASPECTS, judge_prompt
from lmcot.training.search_space import check_reward_config

QUESTIONS = ["Who was born first?", "Who was born first?", "Which city is larger?"]
CONTEXTS = ["Ann was born in 1901. Bob was born in 1910.", "Ann was born in 1901. Bob was born in 1910.",
            "Oslo has 700k people. Bergen has 285k."]
RATIONALES = ["Ann was born in 1901 and Bob in 1910, so Ann was first.", "Bob was born later.",
              "Oslo is larger than Bergen."]
COLUMNS = dict(question=QUESTIONS, context=CONTEXTS, answer=["Ann", "Ann", ["Oslo", "Oslo city"]])


@pytest.fixture(scope="module")
def large():
    return HFGenerator(ModelSpec("tiny:t5-large"), batch_size=64)


@pytest.fixture()
def judge(large):
    return rewards.RewardJudge(large, answer_max_new_tokens=6)


def test_rewards_are_named_in_one_dict():
    assert list(rewards.REWARDS) == ["task", *ASPECTS, "quality", "degenerate"]
    for name, fn in rewards.REWARDS.items():
        assert fn.__name__ == name and fn.__doc__ and ">>>" in fn.__doc__


def test_task_reward_scores_the_large_lms_answer_against_gold(judge):
    f1 = rewards.task(["p"] * 3, RATIONALES, judge=judge, **COLUMNS)
    predictions = judge.answers(QUESTIONS, CONTEXTS, RATIONALES)
    assert judge.calls == 1, "the answers of a batch come from one generate call"
    assert f1 == [answer_metrics(p, g if isinstance(g, list) else [g])["f1"]
                  for p, g in zip(predictions, COLUMNS["answer"])]
    em = rewards.task(["p"] * 3, RATIONALES, judge=judge, task_metric="em", **COLUMNS)
    assert judge.calls == 1 and all(e in (0.0, 1.0) and e <= f for e, f in zip(em, f1))
    with pytest.raises(ValueError, match="task_metric"):
        rewards.task(["p"] * 3, RATIONALES, judge=judge, task_metric="acc", **COLUMNS)


def test_task_reward_is_one_when_any_gold_alias_matches_the_answer(judge):
    predictions = judge.answers(QUESTIONS, CONTEXTS, RATIONALES)
    golds = [["qqqq", p] for p in predictions]  # the large LM's own answer as a second alias
    r = rewards.task(["p"] * 3, RATIONALES, judge=judge, question=QUESTIONS, context=CONTEXTS, answer=golds,
                     task_metric="em")
    assert r == [1.0 if p.strip() else 0.0 for p in predictions]
    assert judge.calls == 1


def test_all_aspects_of_a_batch_cost_one_batched_call(judge, large):
    out = {name: rewards.REWARDS[name](["p"] * 3, RATIONALES, judge=judge, **COLUMNS) for name in ASPECTS}
    q = rewards.quality(["p"] * 3, RATIONALES, judge=judge, **COLUMNS)
    assert judge.calls == 1
    for name, scores in out.items():
        assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    assert q[1] == pytest.approx(sum(out[a][1] for a in ASPECTS) / len(ASPECTS))
    # the same numbers as asking the large LM one prompt at a time
    direct = large.score_yes_no([judge_prompt("fluency", QUESTIONS[2], CONTEXTS[2], RATIONALES[2])])[0]
    assert out["fluency"][2] == pytest.approx(direct, abs=1e-5)
    # a new batch is scored anew
    rewards.fluency(["p"], ["Other text."], judge=judge, question=["q"], context=["c"])
    assert judge.calls == 2 and judge.seconds > 0


def test_a_judge_scores_only_the_aspects_it_was_given(large):
    judge = rewards.RewardJudge(large, aspects=["fluency"])
    assert len(rewards.fluency(["p"], ["A text."], judge=judge, question=["q"], context=["c"])) == 1
    with pytest.raises(ValueError, match="needs the judge"):
        rewards.relevance(["p"], ["A text."], judge=judge, question=["q"], context=["c"])
    with pytest.raises(ValueError, match="unknown aspects"):
        rewards.RewardJudge(large, aspects=["wit"])


def test_degenerate_guard():
    texts = ["", "   ", "Ann", "So the answer is: Ann.", "Ann was born in 1901 and Bob in 1910. So the answer is: Ann.",
             "Ann Ann Ann Ann Ann Ann Ann Ann Ann Ann", "born in born in born in born in born in born in"]
    r = rewards.degenerate(["p"] * len(texts), texts, answer=["Ann"] * len(texts))
    assert r[:4] == [-1.0, -1.0, -1.0, -1.0]
    assert r[4] == 0.0
    assert r[5] < -0.8 and -1.0 < r[6] < -0.5
    # without a gold answer, only emptiness and repetition count
    assert rewards.degenerate(["p"], ["Ann"]) == [0.0]


def test_combine_weighted_and_mean():
    parts = {"task": [1.0, 0.0], "fluency": [0.2, 1.0], "coherence": [0.6, 0.0], "degenerate": [0.0, -1.0]}
    weighted = rewards.combine(parts, {"task": 1.0, "fluency": 0.5, "coherence": 0.25, "degenerate": 1.0})
    assert weighted == pytest.approx([1.0 + 0.1 + 0.15, 0.5 - 1.0])
    mean = rewards.combine(parts, {"task": 1.0, "quality": 0.5}, "mean")
    assert mean == pytest.approx([1.0 + 0.5 * 0.4, 0.5 * 0.5])
    with pytest.raises(KeyError, match="relevance"):
        rewards.combine(parts, {"relevance": 1.0})


def test_score_batch_logs_every_component_and_the_total(judge):
    plan, aspects = rewards.reward_plan({"task": 1.0, "quality": 0.5, "degenerate": 1.0}, "mean",
                                        ["fluency", "relevance"])
    judge = rewards.RewardJudge(judge.generator, aspects=aspects, answer_max_new_tokens=4)
    total, parts = rewards.score_batch(["p"] * 3, RATIONALES, plan=plan, aspect_mode="mean", judge=judge, **COLUMNS)
    assert set(parts) == {"task", "quality", "degenerate", "fluency", "relevance"}
    assert judge.calls == 2  # one generate (task) + one score_yes_no (both aspects)
    for i in range(3):
        q = (parts["fluency"][i] + parts["relevance"][i]) / 2
        assert parts["quality"][i] == pytest.approx(q)
        assert total[i] == pytest.approx(parts["task"][i] + 0.5 * q + parts["degenerate"][i])


def test_bound_rewards_accept_trl_call_arguments(judge):
    plan, _ = rewards.reward_plan({"task": 1.0, "fluency": 0.1})
    funcs = rewards.bind_rewards(plan, judge=judge, task_metric="em")
    for f in funcs:
        out = f(prompts=["p"] * 3, completions=RATIONALES, completion_ids=[[1]] * 3, trainer_state=None,
                log_extra=print, log_metric=print, **COLUMNS)
        assert len(out) == 3
    assert judge.calls == 2


@pytest.mark.parametrize("weights, mode, message", [
    ({"task": 1.0, "factualty": 0.1}, "weighted", "did you mean 'factuality'"),
    ({"task": 0.0, "fluency": 0.0}, "weighted", "all zero"),
    ({}, "weighted", "all zero"),
    ({"task": 1.0, "fluency": 0.1}, "mean", "reward_weights.quality"),
    ({"task": 1.0, "quality": 0.1}, "weighted", "aspect_mode=mean"),
])
def test_bad_reward_weights_fail_clearly(weights, mode, message):
    with pytest.raises(ValueError, match=message):
        rewards.check_reward_weights(weights, mode)


def test_bad_reward_weights_fail_before_a_stage_starts():
    with pytest.raises(ConfigError, match=r"refine: reward_weights names unknown reward 'taks'"):
        check_reward_config(load_config("tiny", ["refine.reward_weights={taks: 1.0}"]))
    with pytest.raises(ConfigError, match="refine: reward_weights are all zero"):
        check_reward_config(load_config("tiny", ["refine.reward_weights={task: 0.0}"]))
    cfg = load_config("tiny", ["refine.aspect_mode=mean", "refine.reward_weights={task: 1.0, quality: 0.3}"])
    check_reward_config(cfg)
    assert cfg.refine.reward_weights == {"task": 1.0, "quality": 0.3}
