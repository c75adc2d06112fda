"""``lmcot seeds``: the whole method again for each training seed, on one set of teacher rationales.

Runs ``lmcot run`` (:mod:`lmcot.stages.pipeline`) in the run directory itself for the config's ``seed``
and in ``RUN/seeds/seed-<s>/`` for every other seed of ``pipeline.training_seeds``; each seed directory
starts from a copy of the run's teacher rationales, so only distillation, refinement and the
evaluations differ. Each seed's run skips what it already finished, so an interrupted command resumes.
Then it writes ``RUN/seeds.md``: every claim's ΔF1 and interval per seed, pooled, and whether it holds
on every seed (:mod:`lmcot.evaluation.seeds`). Teacher generation is not rerun per seed: the
rationales are the data a seed trains on, not part of the training randomness measured here.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace

from lmcot.config import Config
from lmcot.evaluation.seeds import seeds_table
from lmcot.runs.evals import read_details
from lmcot.runs.rundir import RunDir
from lmcot.stages import pipeline

log = logging.getLogger("lmcot.seeds")


def seed_run_dir(cfg: Config, run_dir: RunDir, seed: int) -> RunDir:
    """The run directory of ``seed``: the run itself for the config's seed, else a fresh one holding a
    copy of the run's teacher rationales."""
    if seed == cfg.seed:
        return run_dir
    sub = run_dir.seed_run(seed)
    if not sub.rationales.is_dir():
        sub.ensure()
        shutil.copytree(run_dir.rationales, sub.rationales)
    return sub


def run(cfg: Config, run_dir: RunDir) -> dict:
    dirs: dict[int, RunDir] = {}
    pipeline.run(cfg, run_dir)  # the config's own seed first: it makes the rationales every seed shares
    for seed in cfg.pipeline.training_seeds:
        log.info("training seed %d", seed)
        dirs[seed] = seed_run_dir(cfg, run_dir, seed)
        if seed != cfg.seed:
            pipeline.run(replace(cfg, seed=seed), dirs[seed])
    table = seeds_table({seed: {label: read_details(d.eval_dir(label)) for label in d.eval_labels()}
                         for seed, d in dirs.items()})
    run_dir.seeds_report.write_text(
        f"# Claims across training seeds\n\nSeeds {', '.join(map(str, dirs))}; the same teacher rationales and "
        f"evaluation questions for every seed. ΔF1 is B - A in F1 points with its paired 95% interval; "
        f"pooled averages each question's scores over the seeds first.\n\n{table}\n")
    print(table)
    return {"seeds": {seed: str(d.root) for seed, d in dirs.items()}, "report": str(run_dir.seeds_report)}
