"""Choose self-consistency's sampling on a tuning world (never on the evaluation world).

For a run's refined small LM and the large LM, LM-guided CoT at k = 1 (greedy) against each
candidate sampling (temperature, top-p, k, whether the greedy rationale is one of the k), paired on
the same questions of a tuning world (:data:`lmcot.tinyworld.seeds.TUNING`): the vote's F1 with its
paired interval against greedy, the mean F1 of one sample and best-of-k (the vote's ceiling)::

    python tools/tune_self_consistency.py --run-dir runs/tiny_world --limit 200

Writes ``RUN/tuning/self_consistency.{json,md}``; ``docs/design.md`` records the choice it made.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from lmcot.config import ModelSpec, load_config
from lmcot.datasets.data import load_json_file
from lmcot.evaluation.evaluator import prepare_questions, question_scores
from lmcot.scoring.metrics import load_aliases
from lmcot.evaluation.statistics import fmt_interval, paired
from lmcot.inference import method
from lmcot.models.generation import HFGenerator
from lmcot.runs.rundir import RunDir
from lmcot.tinyworld import seeds

CANDIDATES = [  # (temperature, top_p, k, greedy included)
    (0.8, 0.95, 5, False), (0.8, 0.95, 5, True), (0.5, 0.95, 5, True), (0.3, 0.95, 5, True), (0.5, 0.9, 9, True),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, required=True, help="a run of the tiny_world preset (its refined model)")
    p.add_argument("--config", default="tiny_world")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--world", type=int, default=seeds.TUNING[0], help="a tuning world seed")
    p.add_argument("--limit", type=int, default=200, help="questions per dataset")
    args = p.parse_args(argv)
    if seeds.purpose(args.world) != "tuning":
        p.error(f"--world {args.world} is a {seeds.purpose(args.world)} world: choices are made on tuning worlds only")
    cfg = load_config(args.config, args.overrides)
    run = RunDir(args.run_dir)
    small = HFGenerator(ModelSpec(str(run.refine_model), device="cpu"), config=cfg.generation)
    large = HFGenerator(dataclasses.replace(cfg.large, device="cpu"), config=cfg.generation)
    folder = seeds.write_evaluation_world(args.world)
    aliases = load_aliases(folder / "2wiki_id_aliases.json")
    per_q = {}
    samples = {}
    for ds in ("hotpotqa", "2wiki"):
        examples = load_json_file(folder / f"{ds}_dev.json", ds)[: args.limit]
        qs = prepare_questions(examples, mode=cfg.data.context_mode, tokenizer=large.tokenizer,
                               max_tokens=cfg.data.context_max_tokens)
        runs = {"greedy": (cfg.generation, 1)}
        for t, top_p, k, greedy in CANDIDATES:
            runs[f"T{t} p{top_p} k{k}{' +greedy' if greedy else ''}"] = (
                dataclasses.replace(cfg.generation, temperature=t, top_p=top_p, sc_include_greedy=greedy), k)
        for name, (gen, k) in runs.items():
            scored = question_scores(examples, method.lm_guided(qs, small, large, gen, k), aliases)
            for qid, s in scored.items():
                per_q.setdefault(name, {})[f"{ds}/{qid}"] = s["f1"]
                samples.setdefault(name, []).append((sum(s["sample_f1"]) / len(s["sample_f1"]), max(s["sample_f1"])))
            print(f"{ds} {name}: done", file=sys.stderr, flush=True)
    rows, out = ["| sampling | vote F1 | vs greedy (paired 95% CI) | per-sample F1 | best-of-k F1 |",
                 "|---|---:|---:|---:|---:|"], {}
    for name, scores in per_q.items():
        mean = 100 * sum(scores.values()) / len(scores)
        per_sample = 100 * sum(s for s, _ in samples[name]) / len(samples[name])
        best = 100 * sum(b for _, b in samples[name]) / len(samples[name])
        pr = paired(per_q["greedy"], scores)
        out[name] = {"f1": mean, "per_sample_f1": per_sample, "best_of_k_f1": best, "vs_greedy": pr.as_dict()}
        rows.append(f"| {name} | {mean:.1f} | {fmt_interval(pr.delta, pr.low, pr.high)} ({pr.verdict}) | "
                    f"{per_sample:.1f} | {best:.1f} |")
    (run.root / "tuning").mkdir(parents=True, exist_ok=True)
    (run.root / "tuning" / "self_consistency.json").write_text(json.dumps(out, indent=2) + "\n")
    table = "\n".join(rows)
    (run.root / "tuning" / "self_consistency.md").write_text(
        f"# Self-consistency sampling on tuning world {args.world} ({args.limit} questions per dataset)\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
