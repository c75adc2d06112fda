"""Claims across training seeds: per-seed intervals, the pooled one, and "holds on every seed"."""

from lmcot.evaluation.seeds import holds_on_every_seed, seed_claims, seeds_table
from lmcot.evaluation.statistics import HOLDS, NOISE

N = 200


def details(right: int) -> dict[str, dict]:
    """Per-question records of one evaluation: the first ``right`` of N questions answered right."""
    return {f"h/{i}": {"dataset": "h", "id": str(i), "f1": float(i < right), "binary": False} for i in range(N)}


def run(refined: int, distilled: int) -> dict[str, dict[str, dict]]:
    """One seed's evaluations; the rows that do not depend on training are the same for every seed."""
    return {"empty-rationale": details(80), "gold-rationale": details(180), "standard": details(100),
            "cot": details(90), "lm_guided-distilled": details(distilled), "lm_guided-refined": details(refined)}


def by_claim(rows):
    return {claim.better + " vs " + claim.base: (per_seed, pooled) for claim, per_seed, pooled in rows}


def test_a_claim_holds_only_where_it_holds_on_every_seed():
    # seed 0: refined well above distilled; seed 1: level with it
    rows = by_claim(seed_claims({0: run(refined=140, distilled=100), 1: run(refined=100, distilled=100)}))
    per_seed, pooled = rows["lm_guided-refined vs lm_guided-distilled"]
    assert per_seed[0].verdict == HOLDS and per_seed[1].verdict == NOISE
    assert not holds_on_every_seed(per_seed)
    assert abs(pooled.delta - 0.10) < 1e-9, "pooled: each question's mean over seeds, then paired"
    gold_seeds, _ = rows["gold-rationale vs empty-rationale"]
    assert holds_on_every_seed(gold_seeds)


def test_claims_missing_a_row_on_any_seed_are_left_out_and_the_table_says_so():
    second = run(refined=120, distilled=100)
    del second["lm_guided-distilled"]
    rows = by_claim(seed_claims({0: run(refined=120, distilled=100), 1: second}))
    assert "lm_guided-refined vs lm_guided-distilled" not in rows and "lm_guided-refined vs standard" in rows
    assert seeds_table({}).startswith("_No claim")


def test_table_has_a_column_per_seed_pooled_and_the_every_seed_verdict():
    text = seeds_table({0: run(refined=140, distilled=100), 3: run(refined=140, distilled=100)})
    header, _, *lines = text.splitlines()
    assert header.startswith("| claim | seed 0 | seed 3 | pooled | holds on every seed |")
    refined = next(line for line in lines if line.startswith("| refinement helps"))
    assert refined.endswith("| **yes** |") and refined.count("+20.0 [") == 3
