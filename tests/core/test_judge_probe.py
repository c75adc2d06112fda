"""The judge probe (lmcot.evaluation.judge_probe) and what the report makes of it: corruptions built
from a rationale and its context alone, the separation figures, and the aspect table's marks."""

import pytest

from lmcot.evaluation import judge_probe
from lmcot.evaluation.judge_probe import (CORRUPTIONS, JUDGE_CORRUPTION, auc, corrupt, paragraphs, probe,
                                          separation, sentences)
from lmcot.evaluation.report import write_report
from lmcot.prompting.prompts import ASPECTS
from lmcot.runs.evals import read_judge_separation, write_judge_separation
from lmcot.runs.rundir import RunDir, write_json
from lmcot.training.faithfulness import names

CONTEXT = "\n".join([
    "Mimi Crossing: Mimi Crossing is a 1989 Berzanian musical film directed by Selrilan Fenmar. "
    "It was shot in Thofenburg over 20 weeks.",
    "The Garden: The Garden is a 1940 Quinwynander drama film directed by Berpira Misha. "
    "It received glowing reviews.",
    "Pirfen Sparrows: Pirfen Sparrows are a folk rock band from Zanhaven. The band was formed in 1951 by Pirdrio Eth.",
    "Driburg: Driburg is a coastal city in the west of Berzania. The city is known for its canals.",
])
RATIONALE = ("Mimi Crossing is a 1989 Berzanian musical film directed by Selrilan Fenmar. The Garden is a 1940 "
             "Quinwynander drama film directed by Berpira Misha. Mimi Crossing is a musical film and The Garden is a "
             "drama film, so they are not both musical films.")


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_each_corruption_changes_the_rationale(kind):
    bad = corrupt(kind, RATIONALE, CONTEXT)
    assert bad is not None and bad.split() != RATIONALE.split()


def test_every_aspect_has_one_corruption_and_the_tiny_world_uses_the_same_table():
    from lmcot.tinyworld import corruption

    assert set(JUDGE_CORRUPTION) == set(ASPECTS) and set(JUDGE_CORRUPTION.values()) <= set(judge_probe.CORRUPT)
    assert corruption.CORRUPTIONS is CORRUPTIONS and corruption.JUDGE_CORRUPTION is JUDGE_CORRUPTION
    assert JUDGE_CORRUPTION["fluency"] == "broken" and JUDGE_CORRUPTION["readability"] == "repeated"


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("kind", ["wrong_entity", "contradiction"])
def test_a_wrong_name_is_a_context_name_the_rationale_never_states(kind, seed):
    bad = corrupt(kind, RATIONALE, CONTEXT, seed)
    new = [n for n in names(bad) if n not in names(RATIONALE)]
    assert len(new) == 1 and new[0] in names(CONTEXT), (bad, new)
    if kind == "contradiction":  # the rationale kept whole, one of its sentences said again, wrongly
        assert bad.startswith(RATIONALE) and len(sentences(bad)) == len(sentences(RATIONALE)) + 1


@pytest.mark.parametrize("seed", range(10))
def test_unrelated_sentences_come_from_paragraphs_the_rationale_does_not_use(seed):
    unused = {s for title, sents in paragraphs(CONTEXT) if title in ("Pirfen Sparrows", "Driburg") for s in sents}
    bad = corrupt("unrelated", RATIONALE, CONTEXT, seed)
    assert set(sentences(bad)) <= unused and len(sentences(bad)) == len(unused) - 1 == 3


def test_reversed_steps_keep_every_sentence():
    bad = corrupt("shuffled", RATIONALE, CONTEXT)
    assert sentences(bad) == sentences(RATIONALE)[::-1]


def test_corruptions_are_deterministic_and_follow_the_seed():
    for kind in CORRUPTIONS:
        assert corrupt(kind, RATIONALE, CONTEXT) == corrupt(kind, RATIONALE, CONTEXT, judge_probe.SEED)
    assert len({corrupt("broken", RATIONALE, CONTEXT, seed) for seed in range(5)}) > 1


@pytest.mark.parametrize("kind, rationale, context", [
    ("wrong_entity", "so they are both films.", CONTEXT),  # no name to swap
    ("wrong_entity", "Ann is older.", "Ann: Ann is 40."),  # the context names no one else
    ("contradiction", "Ann is older.", "Ann: Ann is 40."),
    ("unrelated", "Ann is 40.", "Ann: Ann is 40."),  # every paragraph is the rationale's
    ("shuffled", "older", ""),
    ("broken", "", ""),
])
def test_a_corruption_that_cannot_apply_says_so(kind, rationale, context):
    assert corrupt(kind, rationale, context) is None
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt("nonsense", rationale, context)


def test_auc_counts_ties_half():
    assert auc([0.9, 0.8, 0.7], [0.1, 0.2]) == 1.0
    assert auc([0.1, 0.2], [0.9, 0.8, 0.7]) == 0.0
    assert auc([0.5, 0.9], [0.5, 0.1]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)  # one tie of four pairs


def test_separation_follows_the_paired_interval():
    gold, bad = [0.8, 0.7, 0.9, 0.6] * 10, [0.3, 0.4, 0.2, 0.65] * 10
    s = separation(gold, bad)
    assert s["separates"] and s["low"] > 0 and s["n"] == 40 and s["auc"] > 0.9
    assert (s["gold"], s["corrupted"], s["delta"]) == pytest.approx((0.75, 0.3875, 0.3625))
    assert not separation([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5])["separates"]
    flipped = separation(bad, gold)
    assert not flipped["separates"] and flipped["verdict"] == "reversed" and flipped["auc"] < 0.1
    with pytest.raises(ValueError, match="pair them by question"):
        separation([0.5], [0.5, 0.4])


def test_probe_judges_only_corrupted_copies_and_skips_what_it_cannot_corrupt():
    calls = []

    def score(aspect, qs, cs, rs):
        calls.append((aspect, list(rs)))
        return [0.2] * len(rs)

    rationales = [RATIONALE, "so they are both films."]  # the second has no name to swap
    rec = probe(["q1", "q2"], [CONTEXT, CONTEXT], rationales, {"factuality": [0.9, 0.8], "fluency": [0.7, 0.6]}, score)
    assert [a for a, _ in calls] == ["factuality", "fluency"]
    assert all(r not in rationales for _, rs in calls for r in rs), "only corrupted copies go to the judge again"
    f, fl = rec["aspects"]["factuality"], rec["aspects"]["fluency"]
    assert (f["n"], f["skipped"], f["gold_scores"], f["corrupted_scores"]) == (1, 1, [0.9], [0.2])
    assert (fl["n"], fl["skipped"], fl["auc"]) == (2, 0, 1.0) and fl["corruption"] == "broken"
    assert rec["questions"] == 2 and rec["seed"] == judge_probe.SEED


# -- the report ------------------------------------------------------------------------------------
def _metrics(label, method, f1):
    ds = {"em": f1, "f1": f1, "prec": f1, "recall": f1, "n": 3, "missing": 0, "large_calls_per_question": 1,
          "large_tokens_per_question": 10, "small_tokens_per_question": 0}
    return {"method": method, "self_consistency": 1, "label": label, "context_mode": "all",
            "oracle": method == "gold_rationale", "datasets": {"hotpotqa": ds}}


def _judged_run(tmp_path, with_separation=True):
    run = RunDir(tmp_path)
    for label, method, f1, scores in (
            ("lm_guided-distilled", "lm_guided", 0.40, {"relevance": 0.500, "logicality": 0.800}),
            ("lm_guided-refined", "lm_guided", 0.33, {"relevance": 0.708, "logicality": 0.876}),
            ("gold-rationale", "gold_rationale", 0.60, {"relevance": 0.618, "logicality": 0.731})):
        write_json(run.eval_metrics(label), _metrics(label, method, f1))
        write_json(run.eval_aspects(label), scores)
    if with_separation:  # the judge tells unrelated sentences apart, reversed steps not at all
        gold = {"relevance": [0.8] * 3, "logicality": [0.5] * 3}
        fake = lambda aspect, qs, cs, rs: [0.2 if aspect == "relevance" else 0.5] * len(rs)  # noqa: E731
        write_judge_separation(run.eval_dir("gold-rationale"), probe(["q"] * 3, [CONTEXT] * 3, [RATIONALE] * 3,
                                                                     gold, fake))
    return run


def test_the_separation_file_reads_back_through_runs(tmp_path):
    run = _judged_run(tmp_path)
    rec = read_judge_separation(run.eval_dir("gold-rationale"))
    assert run.eval_judge_separation("gold-rationale").is_file()
    assert rec["aspects"]["relevance"]["separates"] and not rec["aspects"]["logicality"]["separates"]
    assert read_judge_separation(run.eval_dir("lm_guided-refined")) is None


def test_the_aspect_table_marks_rows_above_gold_and_shows_the_judges_separation(tmp_path):
    text = write_report(_judged_run(tmp_path)).read_text()
    assert "| lm_guided-refined | 0.708 † | 0.876 † |" in text
    assert "| lm_guided-distilled | 0.500 | 0.800 † |" in text, "above gold on logicality only"
    assert "| gold-rationale | 0.618 | 0.731 |" in text
    assert ("† `lm_guided-refined` is judged above the gold chain of thought (`gold-rationale`) on 2 of 2 aspects "
            "(1 of them aspects the judge separates) while its answers are 27.0 F1 worse: the judge rewards what it "
            "likes, not what helps the large LM answer, so it can be gamed.") in text
    assert "† `lm_guided-distilled` is judged above the gold chain of thought (`gold-rationale`) on 1 of 2" in text
    assert "| *judge separates gold from corrupted (AUC)* | yes (1.00) | no (0.50) |" in text
    assert "| relevance | unrelated sentences | 3 | 0.800 | 0.200 | +0.600 [+0.600, +0.600] | 1.00 | yes |" in text
    assert "| logicality | reversed steps | 3 | 0.500 | 0.500 | +0.000 [+0.000, +0.000] | 0.50 | no |" in text


def test_a_gold_row_without_a_probe_says_it_was_not_measured(tmp_path):
    text = write_report(_judged_run(tmp_path, with_separation=False)).read_text()
    assert "| lm_guided-refined | 0.708 † | 0.876 † |" in text and "separates" not in text.split("## Finding")[0]
    assert "The judge's separation of gold from corrupted rationales was not measured" in text
