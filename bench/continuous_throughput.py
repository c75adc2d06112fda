"""Offline generation throughput of the static and the continuous engine, side by side in one run.

Workloads on the shipped tiny-world T5s (``configs/tiny_world.yaml``, CPU), the same prompts and
settings for both engines (``generation.batch_size`` rows per static batch = slots of the continuous
engine; sampling at ``generation.temperature`` / ``top_p`` / ``seed``):

- ``teacher``: the large T5 samples ``--k`` rationales (up to ``generation.rationale_max_new_tokens``
  = 96 new tokens) for each of ``--teacher-questions`` training questions per call, with the prompt
  and call of the rationale stage (:func:`lmcot.training.teacher.teacher_prompt`). The stage calls
  the generator with ``rationales.batch_size`` questions at a time (32 x 2 = 64 rows on this preset);
  several call sizes show how the gain grows with the rows one call hands the engine;
- ``sc5``: self-consistency with k = 5 on ``--sc-questions`` evaluation questions, as the method
  runs it: CoT (:func:`lmcot.inference.method.cot`: the large T5 samples 5 reasoning paths) and
  LM-guided CoT (:func:`lmcot.inference.method.lm_guided`: the small T5 samples 5 rationales, the
  large T5 answers each greedily).

Throughput is generated tokens (the completion tokens every call reports) per second. Each engine
warms up on a short call, then runs each workload ``--repeats`` times, the engines alternating so
that load on a shared machine falls on both alike; the median counts. Wall time is what a user waits;
process CPU time (one torch thread) is the work done, steadier than wall time on a busy machine.
Sampled texts differ between the engines (per-row seeds), so their token counts differ a little;
tokens per second accounts for that. Prints a markdown table.
Run: ``nice .venv/bin/python bench/continuous_throughput.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def teacher_workload(cfg, questions: int, k: int):
    """A callable running the teacher's rationale call on ``questions`` training questions; returns tokens generated."""
    from lmcot.datasets.data import load_split
    from lmcot.prompting.roles import ROLES
    from lmcot.training.teacher import question_rows, teacher_prompt

    spec = cfg.data.datasets[0]
    rows = question_rows(load_split(spec, "train")[:questions], spec.name, k)
    gen = cfg.generation
    prompts: list[str] = []

    def run(generators) -> int:
        large = generators["large"]
        if not prompts:
            prompts.extend(teacher_prompt(row, cfg.data, large.tokenizer)[1] for row in rows)
        out = large.generate(prompts, max_new_tokens=ROLES["teacher"].reserve(gen), n=k,
                             temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed)
        return sum(g.completion_tokens for g in out)

    return run


def sc_workload(cfg, questions: int, method: str, k: int = 5):
    """A callable running self-consistency (``cot`` or ``lm_guided``, k samples) on evaluation questions."""
    from lmcot.datasets.data import load_split
    from lmcot.evaluation.evaluator import prepare_questions
    from lmcot.inference import method as methods
    from lmcot.models.loading import context_tokenizer

    spec = cfg.data.datasets[0]
    qs = prepare_questions(load_split(spec, "dev")[:questions], mode=cfg.data.context_mode,
                           tokenizer=context_tokenizer(cfg.large), max_tokens=cfg.data.context_max_tokens)

    def run(generators) -> int:
        if method == "cot":
            results = methods.cot(qs, generators["large"], cfg.generation, k=k)
        else:
            results = methods.lm_guided(qs, generators["small"], generators["large"], cfg.generation, k=k)
        return sum(r.usage["small"].completion_tokens + r.usage["large"].completion_tokens for r in results)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher-questions", type=int, nargs="+", default=[32, 128],
                   help="training questions per teacher call; several values run several workloads [32 128]")
    p.add_argument("--k", type=int, default=0, help="teacher rationales per question [rationales.samples_per_question]")
    p.add_argument("--sc-questions", type=int, default=32, help="evaluation questions of the SC workloads [32]")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per engine and workload [3]")
    p.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    p.add_argument("--config", default="tiny_world", help="preset [tiny_world]")
    args = p.parse_args()

    import torch

    from lmcot.config import load_config
    from lmcot.models.continuous import ContinuousGenerator
    from lmcot.models.generation import HFGenerator
    from lmcot.models.loading import load_model

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    k = args.k or cfg.rationales.samples_per_question
    loaded = {role: load_model(getattr(cfg, role), attn_implementation=cfg.generation.attn_implementation)
              for role in ("small", "large")}
    engines = {}  # both engines share the loaded weights
    for engine, cls in (("static", HFGenerator), ("continuous", ContinuousGenerator)):
        gen = load_config(args.config, [f"generation.engine={engine}"]).generation
        engines[engine] = {role: cls(getattr(cfg, role), config=gen, loaded=loaded[role])
                           for role in ("small", "large")}
        for generator in engines[engine].values():  # warm-up
            generator.generate(["Question: Who founded Vexa?\nAnswer:"] * 2, max_new_tokens=8)
    new = cfg.generation.rationale_max_new_tokens
    workloads = {f"teacher rationales, {q} questions x k={k} = {q * k} rows, up to {new} new tokens":
                 teacher_workload(cfg, q, k) for q in args.teacher_questions}
    workloads[f"CoT SC k=5, {args.sc_questions} questions (large T5: 5 paths each)"] = sc_workload(
        cfg, args.sc_questions, "cot")
    workloads[f"LM-guided SC k=5, {args.sc_questions} questions (small T5: 5 rationales; large: 5 answers)"] = (
        sc_workload(cfg, args.sc_questions, "lm_guided"))
    print(f"{args.config}: batch_size {cfg.generation.batch_size} rows, temperature {cfg.generation.temperature}, "
          f"top_p {cfg.generation.top_p}; torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs", flush=True)
    table = ["| workload | tokens (static / continuous) | static tok/s | continuous tok/s | ratio, wall | "
             "ratio, CPU time |", "|---|---:|---:|---:|---:|---:|"]
    for name, run in workloads.items():
        wall: dict[str, list[float]] = {e: [] for e in engines}
        cpu: dict[str, list[float]] = {e: [] for e in engines}
        tokens: dict[str, int] = {}
        for _ in range(args.repeats):
            for engine, generators in engines.items():
                started, started_cpu = time.perf_counter(), time.process_time()
                tokens[engine] = run(generators)
                seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
                wall[engine].append(tokens[engine] / seconds)
                cpu[engine].append(tokens[engine] / cpu_seconds)
                print(f"  {name} / {engine}: {tokens[engine]} tokens in {seconds:.1f} s ({cpu_seconds:.1f} s CPU)",
                      flush=True)
        med = {e: (statistics.median(wall[e]), statistics.median(cpu[e])) for e in engines}
        table.append(f"| {name} | {tokens['static']} / {tokens['continuous']} | {med['static'][0]:.0f} | "
                     f"{med['continuous'][0]:.0f} | {med['continuous'][0] / med['static'][0]:.2f}x | "
                     f"{med['continuous'][1] / med['static'][1]:.2f}x |")
    print("\n".join(table))


if __name__ == "__main__":
    main()
