"""Adaptive self-consistency over scripted Generators: rounds, early stop on agreement, merging, ``lmcot eval --adaptive``.

Each question of the scripted large LM has its own list of answers, drawn one per sample in order
across calls, so a later round sees fresh samples and which question stops when is decided by the
rule alone.
"""

from __future__ import annotations

import dataclasses

import pytest

from lmcot.config import GenerationConfig, load_config
from lmcot.evaluation.evaluator import evaluate
from lmcot.inference.adaptive import merge_results, round_generation, round_sizes, run_adaptive
from lmcot.inference.method import MethodResult, Question, run_method
from lmcot.models.generation import Generation, Usage

GEN = GenerationConfig(temperature=0.7, seed=3)
EASY, HARD = Question("easy", "Capital of France?", "ctx"), Question("hard", "Which one?", "ctx")


class ScriptedLM:
    """Sample i of a question's prompt is the next of its ``answers`` (a cycle); every call is recorded."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = answers
        self.drawn = {key: 0 for key in answers}
        self.calls: list[dict] = []

    def generate(self, prompts, *, max_new_tokens, n=1, temperature=0.0, top_p=1.0, seed=None):
        self.calls.append({"questions": [self._key(p) for p in prompts], "n": n, "seed": seed})
        out = []
        for p in prompts:
            key = self._key(p)
            texts = []
            for _ in range(n):
                script = self.answers[key]
                texts.append(f"Answer: {script[self.drawn[key] % len(script)]}.")
                self.drawn[key] += 1
            out.append(Generation(texts=tuple(texts), prompt_tokens=10, completion_tokens=3 * n))
        return out

    def _key(self, prompt: str) -> str:
        return next(key for key, q in (("easy", EASY), ("hard", HARD)) if q.question in prompt)


def test_round_sizes_split_k_and_never_leave_a_round_of_one():
    assert round_sizes(6, True, 2) == [2, 2, 2]
    assert round_sizes(7, True, 3) == [3, 4]
    assert round_sizes(5, False, 2) == [5] and round_sizes(2, True, 2) == [2]


def test_a_question_stops_once_more_samples_cannot_change_its_vote():
    large = ScriptedLM({"easy": ["Paris"], "hard": ["X", "Y"]})
    easy, hard = run_adaptive("standard", [EASY, HARD], small=None, large=large, gen=GEN, k=6, round_size=2)
    # easy: 2-0 after round 1 (4 samples left could still tie), 4-0 after round 2 (2 left cannot): stop
    assert easy.answers == ["Paris"] * 4 and easy.votes == {"Paris": 4}
    # hard: never settled, all 6 drawn; the tie goes to the answer seen first
    assert hard.answers == ["X", "Y"] * 3 and (hard.answer, hard.votes) == ("X", {"X": 3, "Y": 3})
    assert [c["questions"] for c in large.calls] == [["easy", "hard"], ["easy", "hard"], ["hard"]]
    assert [c["n"] for c in large.calls] == [2, 2, 2]
    # later rounds draw fresh samples: a seeded generator would otherwise repeat the first round
    assert [c["seed"] for c in large.calls] == [3, 4, 5]
    assert easy.usage["large"].as_dict() == {"calls": 2, "prompt_tokens": 20, "completion_tokens": 12}


def test_without_adaptive_it_is_the_method_with_all_k_at_once():
    script = {"easy": ["Paris"], "hard": ["X", "Y"]}
    plain = run_method("standard", [EASY, HARD], small=None, large=ScriptedLM(script), gen=GEN, k=6)
    large = ScriptedLM(script)
    same = run_adaptive("standard", [EASY, HARD], small=None, large=large, gen=GEN, k=6, round_size=2, adaptive=False)
    assert same == plain and len(large.calls) == 1 and large.calls[0]["n"] == 6


def test_merge_re_votes_over_both_rounds_and_adds_usage():
    a = MethodResult("q", "X", {"X": 1}, ["r1"], ["X"], {"small": Usage(1, 5, 2), "large": Usage(1, 10, 1)})
    b = MethodResult("q", "Y", {"Y": 2}, ["r2", "r3"], ["Y", "Y"], {"small": Usage(1, 5, 4), "large": Usage(2, 20, 2)})
    merged = merge_results(a, b)
    assert (merged.answer, merged.votes, merged.rationales) == ("Y", {"X": 1, "Y": 2}, ["r1", "r2", "r3"])
    assert merged.usage["large"].as_dict() == {"calls": 3, "prompt_tokens": 30, "completion_tokens": 3}
    assert a.usage["large"].calls == 1, "the first round's result is left as it was"


def test_the_greedy_rationale_is_drawn_in_the_first_round_only():
    gen = dataclasses.replace(GEN, sc_include_greedy=True)
    assert round_generation(gen, 0) is gen and not round_generation(gen, 1).sc_include_greedy
    small = ScriptedLM({"easy": ["r"], "hard": ["r"]})
    large = ScriptedLM({"easy": ["Paris"], "hard": ["X", "Y"]})
    (hard,) = run_adaptive("lm_guided", [HARD], small=small, large=large, gen=gen, k=6, round_size=2)
    assert len(hard.rationales) == 6
    assert [c["n"] for c in small.calls] == [1, 1, 2, 2], "greedy + 1 sampled, then 2 sampled per round"


def test_lmcot_eval_adaptive_runs_the_rounds():
    from lmcot.cli import _eval_overrides, build_parser

    args = build_parser().parse_args(["eval", "--run-dir", "r", "--self-consistency", "6", "--adaptive"])
    cfg = load_config("tiny", _eval_overrides(args))
    assert cfg.eval.adaptive and cfg.eval.output_label == "lm_guided-sc6-adaptive"
    plain = build_parser().parse_args(["eval", "--run-dir", "r", "--self-consistency", "6"])
    assert "eval.adaptive=True" not in _eval_overrides(plain), "no flag: the config's own setting stands"
    large = ScriptedLM({"easy": ["Paris"], "hard": ["X", "Y"]})
    easy, hard = evaluate([EASY, HARD], method="standard", k=6, small=None, large=large, gen=GEN,
                          adaptive=cfg.eval.adaptive, round_size=cfg.eval.adaptive_round_size)
    assert (len(easy.answers), len(hard.answers)) == (4, 6)


def test_a_round_of_one_sample_is_refused_in_the_config():
    with pytest.raises(Exception, match="adaptive_round_size must be >= 2"):
        load_config("tiny", ["eval.adaptive_round_size=1"])
