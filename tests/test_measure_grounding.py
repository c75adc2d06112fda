"""The grounding tool's per-question-type breakdown (``tools/measure_grounding.py``)."""

from __future__ import annotations


def test_by_type_pairs_each_type_on_its_own_questions(load_script):
    """Each type is paired on its own questions only: a small LM that matches the gold chain of thought on
    comparisons and the empty rationale on bridges shows +1.0 on one and 0 on the other, not +0.5 on both."""
    tool = load_script("tools/measure_grounding.py")
    kinds = {f"w/hotpotqa/c{i}": "hotpotqa/comparison" for i in range(6)}
    kinds.update({f"w/hotpotqa/b{i}": "hotpotqa/bridge" for i in range(4)})
    empty = {k: 0.0 for k in kinds}
    gold = {k: 1.0 for k in kinds}
    small = {k: 1.0 if "/c" in k else 0.0 for k in kinds}
    per_type = {"hotpotqa/comparison": {"faithful": [1.0] * 6, "cut": [0.0] * 6},
                "hotpotqa/bridge": {"faithful": [0.0, 1.0, 0.0, 0.0], "cut": [1.0, 1.0, 0.0, 0.0]}}
    out = tool.by_type({"empty": empty, "gold": gold, "s": small}, "s", kinds, per_type)
    comparison, bridge = out["hotpotqa/comparison"], out["hotpotqa/bridge"]
    assert (comparison["questions"], bridge["questions"]) == (6, 4)
    assert comparison["lm_guided_vs_empty"]["delta"] == 1.0 and bridge["lm_guided_vs_empty"]["delta"] == 0.0
    assert bridge["gold_vs_empty"]["delta"] == 1.0 and bridge["empty_f1"] == 0.0
    assert (bridge["faithful_share"], bridge["cut_share"], comparison["cut_share"]) == (0.25, 0.5, 0.0)
    text = tool.table({"worlds": [1], "questions": 10, "empty_f1": 0.0,
                       "gold_vs_empty": out["hotpotqa/bridge"]["gold_vs_empty"],
                       "small": {"s": {"faithful_share": 0.7, "name_recall": 0.5, "lm_guided_f1": 60.0,
                                       "lm_guided_vs_empty": comparison["lm_guided_vs_empty"], "by_type": out}}})
    assert "| hotpotqa/bridge | 4 | 0.0 |" in text and "50% |" in text


def test_summary_pairs_each_small_lm_against_cot_and_against_the_first(load_script):
    """The large LM's own CoT is the baseline LM-guided CoT must beat, and two candidate small LMs are
    compared with each other on the same questions: a candidate right where the first is wrong gains."""
    tool = load_script("tools/measure_grounding.py")
    keys = [f"w/2wiki/q{i}" for i in range(8)]
    kinds = dict.fromkeys(keys, "2wiki/comparison")
    f1 = {"empty": dict.fromkeys(keys, 0.0), "gold": dict.fromkeys(keys, 1.0),
          "cot": {k: float(i < 4) for i, k in enumerate(keys)},
          "first": {k: float(i < 2) for i, k in enumerate(keys)},
          "second": {k: float(i < 6) for i, k in enumerate(keys)}}
    grounding = {name: {"faithful": [1.0] * 8, "recall": [0.5] * 8} for name in ("first", "second")}
    per_type = {name: {"2wiki/comparison": {"faithful": [1.0] * 8, "cut": [0.0] * 8}} for name in grounding}
    out = tool.summarize([1], f1, grounding, kinds, per_type)
    assert out["cot_f1"] == 50.0 and out["cot_vs_empty"]["delta"] == 0.5
    first, second = out["small"]["first"], out["small"]["second"]
    assert first["lm_guided_vs_cot"]["delta"] == -0.25 and second["lm_guided_vs_cot"]["delta"] == 0.25
    assert "vs_first" not in first and second["vs_first"]["delta"] == 0.5
    assert second["by_type"]["2wiki/comparison"]["cot_vs_empty"]["delta"] == 0.5
    text = tool.table(out)
    assert "own CoT 50.0 F1 (+50.0" in text
    second_row = next(line for line in text.splitlines() if line.startswith("| `second`"))
    vs_cot, vs_first = second_row.strip("| ").split(" | ")[-2:]
    assert vs_cot.startswith("+25.0 [") and vs_first.startswith("+50.0 [")


def test_comparison_steps_are_checked_for_their_conclusion_and_for_comparing_two_values(load_script):
    """A faithful step that copies one entity's year twice is counted as comparing nothing, and its
    conclusion against the gold step's; a question without a comparison step is left out of both shares."""
    tool = load_script("tools/measure_grounding.py")
    gold = ("A was founded in 1951. B was founded in 1963. A was founded in 1951 and B in 1963; "
            "1951 is earlier than 1963, so A was founded first.")
    same = "A was founded in 1951 and B in 1951; 1951 is earlier than 1951, so A was founded first."
    wrong = "A was founded in 1963 and B in 1951; 1951 is earlier than 1963, so B was founded first."
    assert tool.comparison_check(gold, gold) == {"conclusion": 1.0, "distinct": 1.0}
    assert tool.comparison_check(same, gold) == {"conclusion": 1.0, "distinct": 0.0}
    assert tool.comparison_check(wrong, gold) == {"conclusion": 0.0, "distinct": 1.0}
    assert tool.comparison_check("A is B.", "A is B.") == {}
    earlier_clause = "A is X; B. A in 1951 and B in 1951; 1951 is earlier than 1951, so A was founded first."
    assert tool.comparison_check(earlier_clause, gold)["distinct"] == 0.0  # the step is its own clause
    countries = "A is from X and B is from Y, so they are not both from X."
    assert tool.comparison_check(countries, countries) == {"conclusion": 1.0}
    kinds = {"w/hotpotqa/c0": "hotpotqa/comparison", "w/hotpotqa/c1": "hotpotqa/comparison"}
    f1 = {row: dict.fromkeys(kinds, 0.5) for row in ("empty", "gold", "s")}
    per_type = {"hotpotqa/comparison": {"faithful": [1.0, 1.0], "cut": [0.0, 0.0], "conclusion": [1.0, 0.0],
                                        "distinct": [0.0, 0.0]}}
    out = tool.by_type(f1, "s", kinds, per_type)["hotpotqa/comparison"]
    assert (out["conclusion_share"], out["distinct_share"]) == (0.5, 0.0)
    text = tool.table({"worlds": [1], "questions": 2, "empty_f1": 50.0, "gold_vs_empty": out["gold_vs_empty"],
                       "small": {"s": {"faithful_share": 1.0, "name_recall": 1.0, "lm_guided_f1": 50.0,
                                       "lm_guided_vs_empty": out["lm_guided_vs_empty"],
                                       "by_type": {"hotpotqa/comparison": out}}}})
    assert text.rstrip().endswith("| 100% | 0% | 50% | 0% |")
