"""The three methods, the two reference methods and self-consistency voting, over a scripted Generator.

The scripted generator implements the Generator Protocol with fixed rules, so these
tests check the method's plumbing (batching, voting, usage accounting) exactly.
"""

import pytest

from lmcot.inference import method

from lmcot.prompting import prompts
from lmcot.config import GenerationConfig
from lmcot.models.generation import Generation


class ScriptedLM:
    """Answers by rule: sample i of a prompt returns ``outputs[i % len(outputs)]``."""

    def __init__(self, outputs):
        self.outputs = outputs
        self.calls = []

    def generate(self, prompts_, *, max_new_tokens, n=1, temperature=0.0, top_p=1.0, seed=None):
        self.calls.append((list(prompts_), n))
        return [
            Generation(texts=tuple(self.outputs[i % len(self.outputs)] for i in range(n)),
                       prompt_tokens=len(p.split()), completion_tokens=2 * n)
            for p in prompts_
        ]

    def score_yes_no(self, prompts_):
        return [0.5] * len(prompts_)


GEN = GenerationConfig()
QS = [method.Question("a", "Who?", "ctx one", evidence="A did it."), method.Question("b", "When?", "ctx two",
                                                                                   evidence="It was 1901.")]


@pytest.mark.parametrize(
    "answers, winner, votes",
    [
        (["Paris", "the paris", "London"], "Paris", {"Paris": 2, "London": 1}),
        (["Y", "X", "X", "Y"], "Y", {"Y": 2, "X": 2}),
        (["", "x", ""], "x", {"x": 1}),
        ([], "", {}),
    ],
)
def test_majority_vote(answers, winner, votes):
    assert method.majority_vote(answers) == (winner, votes)


def test_vote_is_settled():
    assert method.vote_is_settled({"a": 2}, 1)
    assert not method.vote_is_settled({"a": 1, "b": 1}, 0)
    assert method.vote_is_settled({"a": 1}, 0)


def test_standard_one_batched_call():
    large = ScriptedLM(["Answer: Paris."])
    results = method.standard(QS, large, GEN)
    assert [r.answer for r in results] == ["Paris", "Paris"]
    assert len(large.calls) == 1 and len(large.calls[0][0]) == 2
    assert results[0].usage["large"].calls == 1
    assert results[0].usage["small"].calls == 0


def test_cot_parses_reasoning_and_votes():
    large = ScriptedLM(["A then B. So the answer is: B.", "A. So the answer is: C.", "So the answer is: B"])
    [r] = method.cot(QS[:1], large, GEN, k=3)
    assert r.answer == "B" and r.votes == {"B": 2, "C": 1}
    assert r.rationales[0] == "A then B."
    assert large.calls[0][1] == 3


def test_lm_guided_k_rationales_k_answers_one_call_each_model():
    small = ScriptedLM(["r1", "r2", "r3"])
    large = ScriptedLM(["Tokyo"])
    results = method.lm_guided(QS, small, large, GEN, k=3)
    assert len(small.calls) == 1 and small.calls[0][1] == 3
    assert len(large.calls) == 1 and len(large.calls[0][0]) == 6  # 2 questions x 3 rationales
    assert large.calls[0][0][0] == prompts.answer_from_rationale_prompt("Who?", "ctx one", "r1")
    r = results[0]
    assert r.rationales == ["r1", "r2", "r3"] and r.answer == "Tokyo" and r.votes == {"Tokyo": 3}
    assert r.usage["small"].calls == 1 and r.usage["large"].calls == 3
    assert r.usage["small"].completion_tokens == 6


def test_run_method_rejects_unknown_and_missing_small():
    with pytest.raises(ValueError, match="unknown method"):
        method.run_method("magic", QS, small=None, large=ScriptedLM(["x"]), gen=GEN)
    with pytest.raises(ValueError, match="small LM"):
        method.run_method("lm_guided", QS, small=None, large=ScriptedLM(["x"]), gen=GEN)


def test_gold_and_empty_rationale_answer_from_the_evidence_and_from_nothing():
    large = ScriptedLM(["Tokyo"])
    gold = method.run_method("gold_rationale", QS, small=None, large=large, gen=GEN)
    assert large.calls[-1][0] == [prompts.answer_from_rationale_prompt("Who?", "ctx one", "A did it."),
                                  prompts.answer_from_rationale_prompt("When?", "ctx two", "It was 1901.")]
    assert [r.rationales for r in gold] == [["A did it."], ["It was 1901."]] and gold[0].answer == "Tokyo"
    empty = method.run_method("empty_rationale", QS, small=None, large=large, gen=GEN)
    assert large.calls[-1][0] == [prompts.answer_from_rationale_prompt(q.question, q.context, "") for q in QS]
    assert empty[1].usage["small"].calls == 0 and empty[1].usage["large"].calls == 1


def test_gold_rationale_needs_labels_and_one_sample():
    unlabelled = [method.Question("c", "Who?", "ctx")]
    with pytest.raises(ValueError, match="supporting facts.*'c'"):
        method.run_method("gold_rationale", unlabelled, small=None, large=ScriptedLM(["x"]), gen=GEN)
    with pytest.raises(ValueError, match="self_consistency to 1"):
        method.run_method("empty_rationale", QS, small=None, large=ScriptedLM(["x"]), gen=GEN, k=3)


class GreedyAwareLM(ScriptedLM):
    """Greedy calls write ``greedy``; sampled ones the scripted outputs."""

    def generate(self, prompts_, *, max_new_tokens, n=1, temperature=0.0, top_p=1.0, seed=None):
        if temperature == 0.0:
            self.calls.append((list(prompts_), n))
            return [Generation(texts=("greedy",), prompt_tokens=len(p.split()), completion_tokens=1) for p in prompts_]
        return super().generate(prompts_, max_new_tokens=max_new_tokens, n=n, temperature=temperature, top_p=top_p)


def test_self_consistency_can_start_from_the_greedy_rationale():
    small, large = GreedyAwareLM(["s1", "s2"]), ScriptedLM(["Tokyo"])
    gen = GenerationConfig(sc_include_greedy=True)
    r = method.lm_guided(QS, small, large, gen, k=3)[0]
    assert r.rationales == ["greedy", "s1", "s2"], "greedy first, then k - 1 samples"
    assert sorted(n for _, n in small.calls) == [1, 2]
    assert r.usage["small"].calls == 1 and r.usage["small"].completion_tokens == 1 + 4
    plain = method.lm_guided(QS, GreedyAwareLM(["s1", "s2"]), large, GenerationConfig(), k=3)[0]
    assert plain.rationales == ["s1", "s2", "s1"]
    pair = method.lm_guided(QS, GreedyAwareLM(["s1", "s2"]), large, gen, k=2)[0]
    assert pair.rationales == ["greedy", "s1"], "k = 2: the greedy rationale and one sample, not two greedy ones"
