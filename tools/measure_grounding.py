"""Does a small LM ground its rationales? Measured on tuning worlds only (never the evaluation world).

For each small LM given (a distilled or refined model folder): its greedy rationales on the dev
questions of tuning worlds (:data:`lmcot.tinyworld.seeds.TUNING`), with the preset's contexts, and

- the share the faithful check accepts (:func:`lmcot.training.faithfulness.is_faithful`: every name and
  number occurs in the context);
- name recall: the share of the gold supporting facts' names and numbers the rationale states
  (:func:`lmcot.training.faithfulness.name_recall`);
- what the rationale does for the large LM: LM-guided F1 against the empty rationale in the same prompt,
  paired on the same questions, with its 95% interval (and the gold chain of thought's, as the ceiling);
- against the large LM's own chain of thought (CoT prompting, the baseline LM-guided CoT must beat), paired;
  and, when several small LMs are given, each against the first, paired, so two candidates are compared
  on the same questions;
- the same per question type (``bridge``, ``comparison``, ...), with the share of rationales that reached
  ``generation.rationale_max_new_tokens`` (cut before their end), so a gap shows where it is;
- on questions whose gold chain of thought ends in a comparison step (:mod:`lmcot.tinyworld.reasoning`):
  the share of rationales whose conclusion (after the last ", so ") is the gold step's, and, where the
  step compares dates, the share that compares two different values (a step that copies one entity's
  year twice is faithful and says nothing).

These are the success criterion of the small T5's pretraining (``docs/design.md``)::

    python tools/measure_grounding.py --small runs/tiny_world/distill/model --limit 200 --out grounding.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

from lmcot.config import ModelSpec, load_config
from lmcot.datasets.data import load_json_file
from lmcot.evaluation.evaluator import prepare_questions, question_scores
from lmcot.evaluation.statistics import fmt_interval, paired
from lmcot.inference import method
from lmcot.models.generation import HFGenerator
from lmcot.scoring.metrics import load_aliases
from lmcot.tinyworld import seeds
from lmcot.training.faithfulness import is_faithful, name_recall


EARLIER = re.compile(r"; ([^;]+?) is earlier than ([^;]+?), so ")


def comparison_check(rationale: str, gold: str) -> dict[str, float]:
    """Whether ``rationale`` ends in ``gold``'s conclusion (``conclusion``) and, where the gold step compares
    dates, whether its own step compares two different values (``distinct``); {} when the gold chain of
    thought has no comparison step.

    >>> gold = "A was founded in 1951. B was founded in 1963. A was founded in 1951 and B in 1963; 1951 is earlier than 1963, so A was founded first."
    >>> comparison_check(gold, gold)
    {'conclusion': 1.0, 'distinct': 1.0}
    >>> comparison_check("A was founded in 1951 and B in 1951; 1951 is earlier than 1951, so B was founded first.", gold)
    {'conclusion': 0.0, 'distinct': 0.0}
    >>> comparison_check("A is from X and B is from Y, so they are not both from X.", "B is from X, so they are both from X."), comparison_check("A is B.", "A is B.")
    ({'conclusion': 0.0}, {})
    """
    if ", so " not in gold:
        return {}
    def conclusion(text):
        return text.rsplit(", so ", 1)[1].strip().rstrip(".") if ", so " in text else None

    out = {"conclusion": float(conclusion(rationale) == conclusion(gold))}
    if EARLIER.search(gold):
        step = EARLIER.search(rationale)
        out["distinct"] = float(bool(step) and step[1].strip() != step[2].strip())
    return out


def world_questions(world: int, limit: int, cfg, tokenizer):
    """(examples, questions, aliases) of both datasets of a tuning world's dev split, as the preset builds them."""
    folder = seeds.write_evaluation_world(world)
    aliases = load_aliases(folder / "2wiki_id_aliases.json")
    out = []
    for ds in ("hotpotqa", "2wiki"):
        examples = load_json_file(folder / f"{ds}_dev.json", ds)[:limit]
        out.append((ds, examples, prepare_questions(examples, mode=cfg.data.context_mode, tokenizer=tokenizer,
                                                    max_tokens=cfg.data.context_max_tokens)))
    return out, aliases


def f1_by_question(key: str, examples, results, aliases) -> dict[str, float]:
    return {f"{key}/{qid}": s["f1"] for qid, s in question_scores(examples, results, aliases).items()}


def measure(small_dirs: list[Path], worlds: list[int], limit: int, cfg) -> dict:
    large = HFGenerator(dataclasses.replace(cfg.large, device="cpu"), config=cfg.generation)
    smalls = {str(d): HFGenerator(ModelSpec(str(d), device="cpu"), config=cfg.generation) for d in small_dirs}
    f1: dict[str, dict[str, float]] = {}
    grounding: dict[str, dict[str, list[float]]] = {name: {"faithful": [], "recall": []} for name in smalls}
    kinds: dict[str, str] = {}  # question key -> dataset/type
    per_type: dict[str, dict[str, dict[str, list[float]]]] = {name: {} for name in smalls}
    cap = cfg.generation.rationale_max_new_tokens
    for world in worlds:
        sets, aliases = world_questions(world, limit, cfg, large.tokenizer)
        for ds, examples, qs in sets:
            key = f"{world}/{ds}"
            kinds.update({f"{key}/{ex.id}": f"{ds}/{ex.type}" for ex in examples})
            for row, results in (("empty", method.empty_rationale(qs, large, cfg.generation)),
                                 ("gold", method.gold_rationale(qs, large, cfg.generation)),
                                 ("cot", method.cot(qs, large, cfg.generation))):
                f1.setdefault(row, {}).update(f1_by_question(key, examples, results, aliases))
            for name, small in smalls.items():
                results = method.lm_guided(qs, small, large, cfg.generation, 1)
                f1.setdefault(name, {}).update(f1_by_question(key, examples, results, aliases))
                for ex, q, r in zip(examples, qs, results):
                    faithful = float(is_faithful(r.rationales[0], q.context))
                    grounding[name]["faithful"].append(faithful)
                    grounding[name]["recall"].append(name_recall(r.rationales[0], ex.evidence))
                    cut = float(len(small.tokenizer(r.rationales[0])["input_ids"]) >= cap)
                    kind = per_type[name].setdefault(f"{ds}/{ex.type}", {"faithful": [], "cut": []})
                    kind["faithful"].append(faithful)
                    kind["cut"].append(cut)
                    for check, value in comparison_check(r.rationales[0], ex.rationale).items():
                        kind.setdefault(check, []).append(value)
                print(f"{key} {name}: e.g. {results[0].rationales[0]!r}", file=sys.stderr, flush=True)
    return summarize(worlds, f1, grounding, kinds, per_type)


def summarize(worlds: list[int], f1: dict[str, dict[str, float]], grounding: dict, kinds: dict[str, str],
              per_type: dict) -> dict:
    """The figures of :func:`measure` from per-question F1 (rows ``empty``, ``gold``, ``cot`` and one per small
    LM, keyed alike) and each small LM's grounding lists; every comparison is paired on the same questions."""
    out = {"worlds": worlds, "questions": len(f1["empty"]), "empty_f1": 100 * sum(f1["empty"].values()) / len(f1["empty"]),
           "gold_vs_empty": paired(f1["empty"], f1["gold"]).as_dict(),
           "cot_f1": 100 * sum(f1["cot"].values()) / len(f1["cot"]),
           "cot_vs_empty": paired(f1["empty"], f1["cot"]).as_dict(), "small": {}}
    first = next(iter(grounding))
    for name, g in grounding.items():
        out["small"][name] = {"faithful_share": sum(g["faithful"]) / len(g["faithful"]),
                              "name_recall": sum(g["recall"]) / len(g["recall"]),
                              "lm_guided_f1": 100 * sum(f1[name].values()) / len(f1[name]),
                              "lm_guided_vs_empty": paired(f1["empty"], f1[name]).as_dict(),
                              "lm_guided_vs_cot": paired(f1["cot"], f1[name]).as_dict(),
                              "by_type": by_type(f1, name, kinds, per_type[name])}
        if name != first:
            out["small"][name]["vs_first"] = paired(f1[first], f1[name]).as_dict()
    return out


def by_type(f1: dict[str, dict[str, float]], name: str, kinds: dict[str, str], per_type: dict) -> dict:
    """Per question type: questions, empty F1, gold, LM-guided and (when measured) the large LM's own CoT
    against empty (paired), faithful and cut shares."""
    out = {}
    for kind, g in sorted(per_type.items()):
        keys = [k for k, v in kinds.items() if v == kind]
        rows = {row: {k: f1[row][k] for k in keys} for row in ("empty", "gold", "cot", name) if row in f1}
        out[kind] = {"questions": len(keys), "empty_f1": 100 * sum(rows["empty"].values()) / len(keys),
                     "gold_vs_empty": paired(rows["empty"], rows["gold"]).as_dict(),
                     "lm_guided_vs_empty": paired(rows["empty"], rows[name]).as_dict(),
                     "faithful_share": sum(g["faithful"]) / len(g["faithful"]), "cut_share": sum(g["cut"]) / len(g["cut"])}
        for check in ("conclusion", "distinct"):
            if g.get(check):
                out[kind][f"{check}_share"] = sum(g[check]) / len(g[check])
        if "cot" in rows:
            out[kind]["cot_vs_empty"] = paired(rows["empty"], rows["cot"]).as_dict()
    return out


def table(result: dict) -> str:
    g = result["gold_vs_empty"]
    rows = [f"Tuning worlds {', '.join(map(str, result['worlds']))}: {result['questions']} questions; empty rationale "
            f"{result['empty_f1']:.1f} F1, gold chain of thought {fmt_interval(g['delta'], g['low'], g['high'])} over it"]
    if "cot_vs_empty" in result:
        c = result["cot_vs_empty"]
        rows[0] += f", the large LM's own CoT {result['cot_f1']:.1f} F1 ({fmt_interval(c['delta'], c['low'], c['high'])})"
    rows[0] += "."
    rows += ["", "| small LM | faithful share | name recall | LM-guided F1 | LM-guided - empty (95% CI) "
             "| LM-guided - CoT | against the first |", "|---|---:|---:|---:|---:|---:|---:|"]

    def interval(p: dict | None) -> str:
        return "" if p is None else f"{fmt_interval(p['delta'], p['low'], p['high'])} ({p['verdict']})"

    for name, r in result["small"].items():
        rows.append(f"| `{name}` | {100 * r['faithful_share']:.1f}% | {100 * r['name_recall']:.1f}% | "
                    f"{r['lm_guided_f1']:.1f} | {interval(r['lm_guided_vs_empty'])} | {interval(r.get('lm_guided_vs_cot'))} "
                    f"| {interval(r.get('vs_first'))} |")
    for name, r in result["small"].items():
        rows += ["", f"By question type, `{name}`:", "",
                 "| dataset/type | questions | empty F1 | gold - empty | LM-guided - empty | CoT - empty | faithful "
                 "| cut at the cap | conclusion = gold's | compares two values |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for kind, t in r.get("by_type", {}).items():
            g, p, c = t["gold_vs_empty"], t["lm_guided_vs_empty"], t.get("cot_vs_empty")
            cot = "" if c is None else fmt_interval(c["delta"], c["low"], c["high"])
            checks = " | ".join(f"{100 * t[k]:.0f}%" if k in t else "" for k in ("conclusion_share", "distinct_share"))
            rows.append(f"| {kind} | {t['questions']} | {t['empty_f1']:.1f} | {fmt_interval(g['delta'], g['low'], g['high'])} | "
                        f"{fmt_interval(p['delta'], p['low'], p['high'])} | {cot} | {100 * t['faithful_share']:.0f}% | "
                        f"{100 * t['cut_share']:.0f}% | {checks} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=Path, action="append", required=True, help="a small LM folder (repeatable)")
    p.add_argument("--config", default="tiny_world")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--world", type=int, action="append", default=None, help="tuning world seed (repeatable; default all)")
    p.add_argument("--limit", type=int, default=200, help="questions per dataset and world")
    p.add_argument("--out", type=Path, default=None, help="write the figures here (JSON) and beside it a .md table")
    args = p.parse_args(argv)
    worlds = args.world or list(seeds.TUNING)
    for w in worlds:
        if seeds.purpose(w) != "tuning":
            p.error(f"--world {w} is a {seeds.purpose(w)} world: the criterion is measured on tuning worlds only")
    result = measure(args.small, worlds, args.limit, load_config(args.config, args.overrides))
    text = table(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
