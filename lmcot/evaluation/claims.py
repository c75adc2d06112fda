"""The paper's claims as paired comparisons of a run's evaluations, and the tables that show them.

Every figure here comes from the per-question scores each evaluation writes with its details
(:func:`lmcot.evaluation.evaluator.question_scores`, read back by :func:`lmcot.runs.evals.read_details`),
so rows are compared on the same questions (:mod:`lmcot.evaluation.statistics`) and a verdict
follows a 95% interval, not a point estimate. Pure functions of those records: the report can be
rebuilt without models.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmcot.evaluation.statistics import Paired, bootstrap_ci, fmt_ci, fmt_interval, paired


@dataclass(frozen=True)
class Claim:
    """One claim of LM-guided CoT: evaluation ``better`` scores above evaluation ``base``."""

    name: str
    base: str
    better: str


CLAIMS = (
    Claim("the large LM reads rationales: gold chain of thought > empty rationale", "empty-rationale",
          "gold-rationale"),
    Claim("the small LM's rationale helps: LM-guided (refined) > empty rationale", "empty-rationale",
          "lm_guided-refined"),
    Claim("the distilled small LM's rationale helps: LM-guided (distilled) > empty rationale", "empty-rationale",
          "lm_guided-distilled"),
    Claim("LM-guided CoT (refined) > standard prompting", "standard", "lm_guided-refined"),
    Claim("LM-guided CoT (refined) > the large LM's own CoT", "cot", "lm_guided-refined"),
    Claim("refinement helps: LM-guided refined > distilled", "lm_guided-distilled", "lm_guided-refined"),
    Claim("self-consistency helps: refined, k samples voted > one greedy rationale", "lm_guided-refined",
          "lm_guided-refined-sc"),
)
"""The claims the report checks. The empty rationale is the same prompt with nothing in the rationale, so
"> empty rationale" isolates what the small LM's rationale adds; standard prompting also changes the
prompt. ``-sc`` names the refined row with the run's k."""

SUBSETS = ("all", "open", "binary")


def scores(details: dict[str, dict], *, dataset: str = "", subset: str = "all", key: str = "f1") -> dict[str, float]:
    """id -> score of the questions of ``dataset`` (all if empty) in ``subset`` (all / open / binary).

    >>> d = {"h/1": {"dataset": "h", "f1": 1.0, "binary": True}, "w/2": {"dataset": "w", "f1": 0.5, "binary": False}}
    >>> scores(d), scores(d, subset="open"), scores(d, dataset="h")
    ({'h/1': 1.0, 'w/2': 0.5}, {'w/2': 0.5}, {'h/1': 1.0})
    """
    keep = {"all": lambda r: True, "open": lambda r: not r.get("binary"), "binary": lambda r: bool(r.get("binary"))}
    return {qid: float(r[key]) for qid, r in details.items()
            if key in r and (not dataset or r["dataset"] == dataset) and keep[subset](r)}


def resolve(claim: Claim, labels: list[str]) -> Claim | None:
    """The claim with ``-sc`` completed to the run's self-consistency label; None if a row is missing."""
    def find(label: str) -> str | None:
        if label.endswith("-sc"):
            return next((x for x in labels if x.startswith(label) and x[len(label):].isdigit()), None)
        return label if label in labels else None

    base, better = find(claim.base), find(claim.better)
    return Claim(claim.name, base, better) if base and better else None


def paired_by_subset(a: dict[str, dict], b: dict[str, dict]) -> dict[str, Paired]:
    """B against A (per-question records of two evaluations) on each subset (all, open, binary) and
    each dataset that the two share questions in; {} when they share none."""
    cells = {}
    for key, where in [*((s, dict(subset=s)) for s in SUBSETS),
                       *((ds, dict(dataset=ds)) for ds in sorted({r["dataset"] for r in a.values()}))]:
        sa, sb = scores(a, **where), scores(b, **where)
        if set(sa) & set(sb):
            cells[key] = paired(sa, sb)
    return cells


def claim_rows(details: dict[str, dict[str, dict]]) -> list[tuple[Claim, dict]]:
    """(claim, {subset or dataset: Paired}) for every claim whose two rows were evaluated with
    per-question scores."""
    out = []
    for claim in CLAIMS:
        c = resolve(claim, list(details))
        cells = paired_by_subset(details[c.base], details[c.better]) if c else {}
        if "all" in cells:
            out.append((c, cells))
    return out


def claims_table(details: dict[str, dict[str, dict]]) -> str:
    """The Claims table: paired ΔF1 (points) with its 95% interval, wins/losses and the verdict."""
    rows = claim_rows(details)
    if not rows:
        return "_The rows the claims compare were not evaluated._"
    datasets = sorted({k for _, cells in rows for k in cells if k not in SUBSETS})
    head = ["| claim | B vs A | n | ΔF1 [95% CI] | wins / losses | verdict | open ΔF1 | binary ΔF1 | "
            + " | ".join(f"{d} ΔF1" for d in datasets) + " |",
            "|---|---|---:|---:|---:|---|---:|---:|" + "---:|" * len(datasets)]
    for c, cells in rows:
        p = cells["all"]
        extra = [fmt_interval(cells[k].delta, cells[k].low, cells[k].high) if k in cells else ""
                 for k in ("open", "binary", *datasets)]
        head.append(f"| {c.name} | `{c.better}` vs `{c.base}` | {p.n} | {fmt_interval(p.delta, p.low, p.high)} | "
                    f"{p.wins} / {p.losses} | **{p.verdict}** | " + " | ".join(extra) + " |")
    return "\n".join(head)


def interval_table(details: dict[str, dict[str, dict]]) -> str:
    """F1 of every evaluation per dataset, with n and a 95% bootstrap interval; open and binary apart."""
    labels = [label for label, d in details.items() if d]
    if not labels:
        return ""
    datasets = sorted({r["dataset"] for label in labels for r in details[label].values()})
    cols = [(ds, subset) for ds in datasets for subset in SUBSETS]
    rows = ["| method | " + " | ".join(f"{ds} {subset} F1 (n)" for ds, subset in cols) + " |",
            "|---|" + "---:|" * len(cols)]
    for label in labels:
        cells = []
        for ds, subset in cols:
            s = list(scores(details[label], dataset=ds, subset=subset).values())
            cells.append(f"{fmt_ci(*bootstrap_ci(s))} ({len(s)})" if s else "")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def sample_table(details: dict[str, dict[str, dict]]) -> str:
    """For each self-consistency row: mean F1 of one sample, best-of-k (the vote's ceiling) and the vote."""
    rows = ["| method | k | per-sample F1 | best-of-k F1 | vote F1 |", "|---|---:|---:|---:|---:|"]
    for label, d in details.items():
        recs = [r for r in d.values() if len(r.get("sample_f1", [])) > 1]
        if not recs:
            continue
        per_sample = [sum(r["sample_f1"]) / len(r["sample_f1"]) for r in recs]
        best = [max(r["sample_f1"]) for r in recs]
        vote = [r["f1"] for r in recs]
        mean = lambda xs: 100 * sum(xs) / len(xs)  # noqa: E731
        rows.append(f"| {label} | {len(recs[0]['sample_f1'])} | {mean(per_sample):.1f} | {mean(best):.1f} | "
                    f"{mean(vote):.1f} |")
    return "\n".join(rows) if len(rows) > 2 else ""
