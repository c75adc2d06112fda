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
