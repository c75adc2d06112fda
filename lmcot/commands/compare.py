"""``lmcot compare A B``: are two evaluations' answers different beyond noise, paired on the same questions?

A and B are evaluation folders (``RUN/eval/<label>/``) or their prediction files. With ``--gold`` the
predictions are scored here against the official-format gold file (aliases optional); without it, the
per-question scores each evaluation recorded with its details are used (:mod:`lmcot.runs.evals`). The
answer is B - A per subset (all, open, binary questions) with its 95% paired bootstrap interval and
the verdict that follows it (:mod:`lmcot.evaluation.statistics`).
"""

from __future__ import annotations

from pathlib import Path

from lmcot.evaluation.claims import SUBSETS, paired_by_subset
from lmcot.evaluation.statistics import fmt_interval, is_binary
from lmcot.runs.evals import read_answers, read_details
from lmcot.runs.rundir import RunDir


def _folder(path: str | Path) -> Path:
    p = Path(path)
    return p.parent if p.is_file() else p


def _scored_details(where: Path) -> dict[str, dict]:
    details = read_details(where)
    if not details:
        raise FileNotFoundError(f"{where}: no {RunDir.details_in(where).name} with per-question scores; pass an "
                                "evaluation folder "
                                "RUN/eval/<label>/ written by lmcot eval or lmcot run, or score predictions with --gold")
    return details


def _rescored(where: Path, gold: list, aliases: dict | None) -> dict[str, dict]:
    from lmcot.scoring.metrics import answer_metrics, gold_answers

    answers = read_answers(where)
    return {f"gold/{ex.id}": {"dataset": "gold", "binary": is_binary(ex.question, ex.answer),
                              "f1": answer_metrics(str(answers.get(ex.id, "")),
                                                   gold_answers(ex.answer, ex.answer_id, aliases))["f1"]}
            for ex in gold}


def compare(a: str | Path, b: str | Path, *, gold: str | None = None, fmt: str = "hotpotqa",
            aliases: str | None = None) -> dict:
    """{subset: paired comparison of B against A} as JSON-ready dicts, plus a one-line summary each."""
    a_dir, b_dir = _folder(a), _folder(b)
    if gold:
        from lmcot.datasets.data import load_json_file
        from lmcot.scoring.metrics import load_aliases

        examples = load_json_file(gold, fmt)
        alias_map = load_aliases(aliases) if aliases else None
        da, db = _rescored(a_dir, examples, alias_map), _rescored(b_dir, examples, alias_map)
    else:
        da, db = _scored_details(a_dir), _scored_details(b_dir)
    out = {"a": str(a_dir), "b": str(b_dir)}
    for subset, p in paired_by_subset(da, db).items():
        if subset in SUBSETS:
            out[subset] = dict(p.as_dict(), summary=f"{subset}: B - A = {fmt_interval(p.delta, p.low, p.high)} F1 "
                                                    f"over {p.n} questions, {p.wins} wins / {p.losses} losses: "
                                                    f"{p.verdict}")
    if "all" not in out:
        raise ValueError(f"{a_dir} and {b_dir} share no question: compare evaluations of the same dev split")
    return out
