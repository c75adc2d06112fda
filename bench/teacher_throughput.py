"""Teacher rationale throughput: the Ray Data actor pool against a one-process Hugging Face loop.

Both sides generate the same rows (the first ``--questions`` HotpotQA training questions,
``--samples`` rationales each) with the same model, and both are timed end to end,
model loading included:

- loop: one process builds the teacher with ``make_generator`` and calls
  ``lmcot.training.teacher.generate_rows`` batch after batch (torch's default threads unless
  ``--baseline-threads`` says otherwise; several values run several loops);
- ray: ``lmcot.stages.rationales.run`` on a 2-CPU local Ray cluster started before the
  clock (a cluster outlives one job): 2 actors of 1 CPU each, shards and stats included.

Besides end-to-end rows/s it prints the start-up (time until the first batch is out)
and the steady-state rows/s after it, so a busy machine's slow process start-up can be
told apart from the generation throughput.

The model is a random T5 larger than the test models (``--d-model`` 512, ``--layers`` 6:
57.7M parameters) with ``min_new_tokens`` equal to the rationale length, so every row
costs the same decode steps and generation, not start-up, dominates the wall time (about
a minute per side for the default 800 rows on 2 CPUs). It is built once under
``artifacts/bench-models/``. Run: ``.venv/bin/python bench/teacher_throughput.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LMCOT_TINY_DIR", str(ROOT / "artifacts" / "tiny-models"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from bench_models import parameter_count, random_t5  # noqa: E402 (bench/ is the script's folder)


def run_loop(cfg, threads: int | None) -> dict:
    """One process, one model, batches of ``rationales.batch_size`` questions."""
    import torch

    from lmcot.datasets.data import load_split
    from lmcot.models.factory import make_generator
    from lmcot.training.teacher import generate_rows, question_rows

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    started = time.time()
    generator = make_generator(cfg.large, cfg.generation)
    spec = cfg.data.datasets[0]
    rows = question_rows(load_split(spec, "train"), spec.name, cfg.rationales.samples_per_question)
    out, bs, first = [], cfg.rationales.batch_size, None
    for i in range(0, len(rows), bs):
        out += generate_rows(generator, rows[i:i + bs], cfg, generator.tokenizer, teacher=cfg.large.name_or_path)
        first = first or (time.time(), len(out))
    end = time.time()
    torch.set_num_threads(before)
    return summary(len(out), started, end, first, threads=threads or before)


def run_ray(cfg) -> dict:
    """The real stage on a fresh run directory (cluster already up); one shard per actor call."""
    import pyarrow.parquet as pq

    from lmcot.runs.rundir import RunDir
    from lmcot.stages import rationales
    from lmcot.training.teacher import shard_paths

    with tempfile.TemporaryDirectory(prefix="lmcot-bench-") as tmp:
        started = time.time()
        result = rationales.run(cfg, RunDir(tmp))
        end = time.time()
        shards = shard_paths(Path(tmp) / "rationales")
        first = (shards[0].stat().st_mtime, pq.read_metadata(shards[0]).num_rows)
        last = shards[-1].stat().st_mtime
    return summary(result["new_rows"], started, end, first, last=last, actors=cfg.rationales.num_actors)


def summary(rows: int, started: float, end: float, first: tuple[float, int], last: float | None = None,
            **extra) -> dict:
    """End-to-end rows/s, time to the first batch out (start-up), and rows/s after it (steady state)."""
    last = last or end
    steady = (rows - first[1]) / (last - first[0]) if last > first[0] else 0.0
    return {"rows": rows, "wall_s": end - started, "rows_per_s": rows / (end - started),
            "first_batch_s": first[0] - started, "steady_rows_per_s": steady, **extra}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=100, help="HotpotQA training questions [100]")
    p.add_argument("--samples", type=int, default=8, help="rationales per question [8]")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens decoded per rationale [32]")
    p.add_argument("--batch-size", type=int, default=4, help="questions per generate call, both sides [4]")
    p.add_argument("--d-model", type=int, default=512, help="bench T5 width [512]")
    p.add_argument("--layers", type=int, default=6, help="bench T5 encoder and decoder layers [6]")
    p.add_argument("--actors", type=int, default=2, help="Ray Data teacher actors (1 CPU each) [2]")
    p.add_argument("--baseline-threads", type=int, nargs="*", default=[0, 1],
                   help="torch threads of the one-process loop; 0 = torch's default; several run several loops")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()

    from lmcot.config import load_config
    from lmcot.stages.cluster import ensure_ray

    model = random_t5(args.d_model, args.layers, min_new_tokens=args.max_new_tokens)
    cfg = load_config("tiny", [
        "data.datasets=[{name: hotpotqa, format: hotpotqa, train_path: 'sample:hotpotqa_synthetic_train', "
        "dev_path: 'sample:hotpotqa_synthetic_dev'}]",
        f"data.datasets.0.limit={args.questions}", f"large.name_or_path={model}",
        f"rationales.samples_per_question={args.samples}", f"rationales.batch_size={args.batch_size}",
        f"rationales.num_actors={args.actors}", "rationales.cpus_per_actor=1", f"rationales.shard_rows={args.batch_size * args.samples}",
        f"generation.rationale_max_new_tokens={args.max_new_tokens}", "generation.batch_size=64",
    ])
    import torch

    params = parameter_count(model)
    print(f"model: random T5 d_model={args.d_model} layers={args.layers} ({params / 1e6:.1f}M params), "
          f"{args.questions} questions x {args.samples} samples = {args.questions * args.samples} rows, "
          f"{args.max_new_tokens} new tokens each, batch {args.batch_size} questions; "
          f"{os.cpu_count()} CPUs, torch default threads {torch.get_num_threads()}", flush=True)
    loops = [run_loop(cfg, t or None) for t in args.baseline_threads]
    ensure_ray(num_cpus=2)
    ray_result = run_ray(cfg)
    sides = [(f"loop, torch threads={loop['threads']}", loop) for loop in loops]
    sides.append((f"ray data, {args.actors} actors x 1 CPU", ray_result))
    print(f"{'side':<30}{'rows':>6}{'wall s':>9}{'rows/s':>9}{'1st batch s':>13}{'steady rows/s':>15}")
    for name, r in sides:
        print(f"{name:<30}{r['rows']:>6}{r['wall_s']:>9.1f}{r['rows_per_s']:>9.2f}{r['first_batch_s']:>13.1f}"
              f"{r['steady_rows_per_s']:>15.2f}")
    for loop in loops:
        print(f"ray / loop (threads={loop['threads']}): {ray_result['rows_per_s'] / loop['rows_per_s']:.2f}x end to "
              f"end, {ray_result['steady_rows_per_s'] / max(loop['steady_rows_per_s'], 1e-9):.2f}x steady state")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "params": params,
                                         "loops": loops, "ray": ray_result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
