"""The claims across training seeds: one paired interval per seed, and one pooled over seeds.

Why: a report's intervals cover which questions were drawn, not training randomness. On the tiny
world one other distillation seed moved "refined > distilled" from +3.2 [+0.9, +5.4] to
+0.5 [-2.3, +3.1]: a claim measured on one run says which run was lucky. So the claims are measured
per seed (each seed's distilled and refined models, the same teacher rationales and questions) and a
claim is stated as holding only where it holds on every seed. The pooled column averages each
question's scores over the seeds before pairing (questions are resampled, seeds are not), which
estimates the effect of the recipe rather than of one run.
"""

from __future__ import annotations

from lmcot.evaluation.claims import CLAIMS, Claim, resolve
from lmcot.evaluation.statistics import HOLDS, Paired, fmt_interval, paired

Details = dict[str, dict[str, dict]]
"""label -> (dataset/id) -> per-question record of one evaluation (:func:`lmcot.runs.evals.read_details`)."""


def _f1(records: dict[str, dict]) -> dict[str, float]:
    return {qid: float(r["f1"]) for qid, r in records.items() if "f1" in r}


def mean_over_seeds(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Each question's mean score over the seeds that scored it in every one.

    >>> mean_over_seeds([{"q1": 1.0, "q2": 0.0}, {"q1": 0.0, "q2": 0.0, "q3": 1.0}])
    {'q1': 0.5, 'q2': 0.0}
    """
    common = set(per_seed[0]).intersection(*per_seed[1:])
    return {q: sum(s[q] for s in per_seed) / len(per_seed) for q in per_seed[0] if q in common}


def seed_claims(details_by_seed: dict[int, Details]) -> list[tuple[Claim, dict[int, Paired], Paired]]:
    """(claim, {seed: B - A}, pooled B - A) for every claim whose two rows every seed evaluated."""
    out = []
    for claim in CLAIMS:
        resolved = {seed: resolve(claim, list(d)) for seed, d in details_by_seed.items()}
        if not resolved or any(c is None for c in resolved.values()):
            continue
        per_seed = {seed: paired(_f1(d[resolved[seed].base]), _f1(d[resolved[seed].better]))
                    for seed, d in details_by_seed.items()}
        base = mean_over_seeds([_f1(d[resolved[s].base]) for s, d in details_by_seed.items()])
        better = mean_over_seeds([_f1(d[resolved[s].better]) for s, d in details_by_seed.items()])
        out.append((claim, per_seed, paired(base, better)))
    return out


def holds_on_every_seed(per_seed: dict[int, Paired]) -> bool:
    return bool(per_seed) and all(p.verdict == HOLDS for p in per_seed.values())


def seeds_table(details_by_seed: dict[int, Details]) -> str:
    """Markdown: each claim's ΔF1 [95% CI] per training seed, pooled, and whether it holds on every seed."""
    rows = seed_claims(details_by_seed)
    if not rows:
        return "_No claim's two rows were evaluated on every seed._"
    seeds = sorted(details_by_seed)
    out = ["| claim | " + " | ".join(f"seed {s}" for s in seeds) + " | pooled | holds on every seed |",
           "|---|" + "---:|" * (len(seeds) + 1) + "---|"]
    for claim, per_seed, pooled in rows:
        cells = [fmt_interval(per_seed[s].delta, per_seed[s].low, per_seed[s].high) for s in seeds]
        out.append(f"| {claim.name} | " + " | ".join(cells)
                   + f" | {fmt_interval(pooled.delta, pooled.low, pooled.high)} | "
                   + ("**yes**" if holds_on_every_seed(per_seed) else "no") + " |")
    return "\n".join(out)
