"""Refinement throughput: rollouts/s, the share of step time in large-LM reward calls, and
what batching the reward calls buys.

Run: ``.venv/bin/python bench/refine_throughput.py`` (CPU, tiny models, local 2-CPU Ray).

Part 1, reward batching (one run, the same judge actor, the same rollouts): ``--workers``
Ray actors stand in for training workers; each holds ``--group`` rollouts (prompts x
samples of one step) of the shipped synthetic questions and computes the reward recipe
of the paper (task + the eight aspects) through a :class:`lmcot.training.rewards.RewardJudge` on
a :class:`lmcot.stages.judge_actor.JudgeClient`, all workers at once:

- ``per-sample``: one call per rollout and reward (1 answer call + 8 aspect calls each),
  what reward functions that each call the judge per completion would do;
- ``per-group``: one call per worker and reward kind (what the training loops do), the
  judge actor merging nothing (``batch_wait_ms=0``);
- ``per-group+merge``: the same, the actor merging the workers' concurrent calls into
  shared forward passes (``batch_wait_ms``).

Part 2, the stage: ``lmcot.stages.refine.run`` on tiny models (2 DeepSpeed workers, one
judge actor) for ``--steps`` steps; rollouts/s and the reward share are the means of
``metrics.jsonl`` over the steps after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LMCOT_TINY_DIR", str(ROOT / "artifacts" / "tiny-models"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / "artifacts" / "torch-extensions"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def rollouts(cfg, n: int) -> list[dict]:
    """``n`` (question, context, gold, rationale) rows from the shipped training questions."""
    from lmcot.datasets.data import load_split
    from lmcot.evaluation.evaluator import prepare_questions

    examples = load_split(cfg.data.datasets[0], "train")
    questions = prepare_questions(examples, mode="all", max_tokens=0)
    rows = []
    for i in range(n):
        ex, q = examples[i % len(examples)], questions[i % len(questions)]
        facts = [p.sentences[0] for p in ex.paragraphs if p.sentences][:2]
        rows.append({"question": q.question, "context": q.context[:600], "answer": [ex.answer],
                     "rationale": " ".join(facts) + f" (sample {i})"})
    return rows


def reward_batching(cfg, *, workers: int, group: int, wait_ms: float, repeats: int) -> dict:
    import ray

    from lmcot.stages.judge_actor import start_judges

    @ray.remote(num_cpus=0)
    class Worker:
        def __init__(self, rows, plan, aspects):
            self.rows, self.plan, self.aspects = rows, plan, aspects

        def score(self, judges, per_sample: bool) -> float:
            from lmcot.scoring.metrics import answer_metrics
            from lmcot.prompting.prompts import answer_from_rationale_prompt, judge_prompt, parse_answer
            from lmcot.training.rewards import RewardJudge, combine, score_batch
            from lmcot.stages.judge_actor import JudgeClient

            client = JudgeClient(judges)
            start = time.perf_counter()
            if per_sample:  # what a reward function calling the judge per completion does
                for r in self.rows:
                    parts = {a: client.score_yes_no([judge_prompt(a, r["question"], r["context"], r["rationale"])])
                             for a in self.aspects}
                    gen = client.generate([answer_from_rationale_prompt(r["question"], r["context"], r["rationale"])],
                                          max_new_tokens=8)
                    parts["task"] = [answer_metrics(parse_answer(gen[0].texts[0]), r["answer"])["f1"]]
                    combine(parts, self.plan)
            else:  # the lmcot rewards: one call per reward kind for the whole group
                judge = RewardJudge(client, aspects=self.aspects, answer_max_new_tokens=8)
                cols = {k: [r[k] for r in self.rows] for k in ("question", "context", "answer")}
                score_batch(["p"] * len(self.rows), [r["rationale"] for r in self.rows], plan=self.plan,
                            judge=judge, **cols)
            return time.perf_counter() - start

    from lmcot.prompting.prompts import ASPECTS
    from lmcot.training.rewards import reward_plan

    plan, aspects = reward_plan({"task": 1.0, **{a: 0.1 for a in ASPECTS}})
    rows = rollouts(cfg, workers * group)
    common = dict(num_actors=1, num_cpus=1, num_gpus=0, batch_size=256)
    plain = start_judges(cfg.large, cfg.generation, batch_wait_ms=0.0, **common)  # merges nothing on purpose
    merging = start_judges(cfg.large, cfg.generation, batch_wait_ms=wait_ms, **common)
    pool = [Worker.remote(rows[w * group:(w + 1) * group], plan, aspects) for w in range(workers)]
    modes = {"per-sample": (plain, True), "per-group": (plain, False), "per-group+merge": (merging, False)}
    walls: dict[str, list[float]] = {m: [] for m in modes}
    batches = {m: 0 for m in modes}
    for round_ in range(repeats + 1):  # round 0 warms up; modes alternate so load drifts hit all alike
        for mode, (judges, per_sample) in modes.items():
            before = ray.get(judges[0].stats.remote())["batches"]
            start = time.perf_counter()
            ray.get([w.score.remote(judges, per_sample) for w in pool])
            if round_:
                walls[mode].append(time.perf_counter() - start)
                batches[mode] += ray.get(judges[0].stats.remote())["batches"] - before
    for actor in [*pool, *plain, *merging]:
        ray.kill(actor)
    results = {}
    for mode in modes:
        wall = statistics.median(walls[mode])
        results[mode] = {"wall_s": round(wall, 3), "rollouts_per_s": round(workers * group / wall, 1),
                         "forward_batches_per_round": round(batches[mode] / repeats, 1),
                         "calls_per_round": workers * (group * (len(aspects) + 1) if modes[mode][1] else 2)}
    base = results["per-sample"]["wall_s"]
    for mode in results:
        results[mode]["speedup_vs_per_sample"] = round(base / results[mode]["wall_s"], 2)
    return results


def stage_run(cfg_args: list[str], steps: int) -> dict:
    from lmcot.config import ModelSpec, load_config
    from lmcot.models.loading import load_model
    from lmcot.runs.rundir import RunDir
    from lmcot.stages import refine

    run_dir = RunDir(tempfile.mkdtemp(prefix="lmcot-refine-bench-"))
    lm = load_model(ModelSpec("tiny:t5-small"))
    lm.model.save_pretrained(run_dir.distill_model)
    lm.tokenizer.save_pretrained(run_dir.distill_model)
    cfg = load_config("tiny", [f"refine.max_steps={steps}", f"refine.save_steps={steps}", *cfg_args])
    start = time.perf_counter()
    out = refine.run(cfg, run_dir)
    wall = time.perf_counter() - start
    lines = [json.loads(line) for line in run_dir.refine_metrics.read_text().splitlines()][1:]
    return {
        "steps": steps, "rollouts_per_step": lines[0]["rollouts"] if lines else None,
        "rollouts_per_s": round(statistics.mean(m["rollouts_per_s"] for m in lines), 2),
        "step_s": round(statistics.mean(m["step_seconds"] for m in lines), 2),
        "reward_share": round(statistics.mean(m["reward_share"] for m in lines), 3),
        "sample_share": round(statistics.mean(m["sample_seconds"] / m["step_seconds"] for m in lines), 3),
        "judge": out["judge"], "wall_s_incl_startup": round(wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--group", type=int, default=8, help="rollouts per worker per step (prompts x samples)")
    parser.add_argument("--wait-ms", type=float, default=20.0, help="the actor's merge window in per-group+merge")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="steps of the stage run (0: skip part 2)")
    args = parser.parse_args()

    import ray

    from lmcot.config import load_config
    from lmcot.stages.cluster import ensure_ray

    cfg = load_config("tiny")
    ensure_ray(num_cpus=2)
    report = {"machine": f"{os.cpu_count()} CPUs", "large": cfg.large.name_or_path,
              "reward_batching": reward_batching(cfg, workers=args.workers, group=args.group, wait_ms=args.wait_ms,
                                                 repeats=args.repeats)}
    if args.steps:
        report["stage"] = stage_run(["refine.prompts_per_step=2", "refine.num_generations=4",
                                     "refine.max_new_tokens=16",
                                     "refine.reward_weights={task: 1.0, factuality: 0.1, relevance: 0.1, "
                                     "logicality: 0.1, consistency: 0.1, coherence: 0.1, fluency: 0.1, "
                                     "naturalness: 0.1, readability: 0.1}"], args.steps)
    ray.shutdown()
    print(json.dumps(report, indent=2))
    rb = report["reward_batching"]
    print(f"\nreward calls for {args.workers} workers x {args.group} rollouts (task + 8 aspects):")
    for mode, r in rb.items():
        print(f"  {mode:16s} {r['wall_s']:7.3f} s  {r['rollouts_per_s']:7.1f} rollouts/s  "
              f"x{r['speedup_vs_per_sample']:.2f} vs per-sample  ({r['calls_per_round']} calls, "
              f"{r['forward_batches_per_round']} forward batches)")
    if "stage" in report:
        s = report["stage"]
        print(f"stage: {s['rollouts_per_s']} rollouts/s, {100 * s['reward_share']:.0f}% of step time in reward "
              f"calls, {100 * s['sample_share']:.0f}% sampling ({s['rollouts_per_step']} rollouts/step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
