"""Teacher rationale generation on Ray Data: sharded over generator actors, filtered, resumable.

The large LM writes a rationale (and its own answer) for every training question;
only rationales whose answer is right are kept for distillation. In production that
is 90k HotpotQA plus 167k 2Wiki questions, so the work is spread with Ray Data:

    driver: load train splits (core loaders) -> skip (dataset, id, sample) keys already
            on disk -> ray.data.from_items(one row per question still missing samples)
    actors: map_batches(TeacherActor, compute=ActorPoolStrategy(size=num_actors)):
            each actor builds the teacher once (make_generator: hf / vllm / openai),
            fits the context with the teacher's tokenizer, draws the samples in one call,
            parses and scores them (lmcot.training.teacher)
    driver: iter_batches() -> rationale_store: parquet shards written atomically, RUN/rationales/

Why the driver writes the shards rather than ``write_parquet``: it is the one place
that sees every row, so it can drop a row whose key is already written. Ray restarts
a killed actor and retries its batch (``max_restarts``/``max_task_retries``); whatever
Ray hands back twice, a key reaches disk once. A shard is written to a temporary name
and renamed, so a killed driver leaves only whole shards, and a rerun reads their keys
and generates exactly the rows that are missing. Writing is cheap next to generation.

Progress: Ray Data's progress bars, plus one log line per shard written.
"""

from __future__ import annotations

import json
import logging
import time

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from lmcot.config import Config, identity
from lmcot.datasets.data import load_split
from lmcot.scoring.metrics import dataset_aliases
from lmcot.models.loading import context_tokenizer
from lmcot.planning.resources import teacher_actor_options, teacher_need
from lmcot.runs import step
from lmcot.runs.rundir import RunDir, write_json
from lmcot.runs.shards import ShardStore
from lmcot.stages.cluster import ensure_ray, require_resources
from lmcot.training.teacher import (check_generation_settings, expected_keys, generate_rows, question_rows,
                                   rationale_store, refilter, rows_to_table, summarize, teacher_manifest)

log = logging.getLogger(__name__)

PASSES = 2
"""Pipeline passes per run: the second only runs if the first left keys missing (it never should)."""


class TeacherActor:
    """One teacher generator per actor, built once; turns question rows into scored rationale rows."""

    def __init__(self, cfg: Config):
        from lmcot.models.factory import make_generator

        self.cfg = cfg
        self.generator = make_generator(cfg.large, cfg.generation)
        # The context budget is counted in the teacher's own tokens (None for an API teacher).
        self.tokenizer = getattr(self.generator, "tokenizer", None)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = generate_rows(self.generator, batch.to_pylist(), self.cfg, self.tokenizer,
                             teacher=self.cfg.large.name_or_path)
        return rows_to_table(rows)


def build_dataset(cfg: Config, rows: list[dict]) -> ray.data.Dataset:
    """The Ray Data pipeline from question rows to rationale rows (lazy until iterated)."""
    rc = cfg.rationales
    # Ray Data already restarts dead actors and retries their tasks without limit; a bound is
    # passed only when asked for (through map_batches' remote args, which Ray removes in 2.64).
    retries = {} if rc.max_restarts == -1 else {"max_restarts": rc.max_restarts, "max_task_retries": rc.max_restarts}
    # One block per actor call, so each batch's rows reach the driver (and a shard) as soon as it is
    # done; at least one block per actor, so a small run still uses the whole pool.
    blocks = min(len(rows), max(rc.num_actors, min(-(-len(rows) // rc.batch_size), 10_000)))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    return ds.map_batches(
        TeacherActor,
        fn_constructor_kwargs={"cfg": cfg},
        batch_size=rc.batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=rc.num_actors),
        **teacher_actor_options(cfg),  # CPUs, GPUs and the teacher's worker group (large.ray_resource)
        **retries,
    )


def _load_datasets(cfg: Config) -> list[tuple[str, list, dict]]:
    """(name, train examples, 2Wiki aliases) of every configured dataset."""
    out = []
    for spec in cfg.data.datasets:
        aliases = dataset_aliases(spec)
        out.append((spec.name, load_split(spec, "train"), aliases))
    return out


def _stats(cfg: Config, run_dir: RunDir, store: ShardStore, expected: set, gen_wall: float, wall: float) -> dict:
    """Totals over every shard, this run's figures appended to ``runs``, and rows/s over all runs."""
    rc = cfg.rationales
    path = run_dir.rationale_stats
    runs = json.loads(path.read_text()).get("runs", []) if path.is_file() else []
    runs.append({"new_rows": store.new_rows, "new_shards": store.new_shards, "generation_wall_s": round(gen_wall, 3),
                 "wall_s": round(wall, 3), "rows_per_s": store.new_rows / gen_wall if store.new_rows else 0.0,
                 "num_actors": rc.num_actors, "batch_size": rc.batch_size})
    generated = sum(r["new_rows"] for r in runs)
    gen_time = sum(r["generation_wall_s"] for r in runs if r["new_rows"])
    stats = summarize(run_dir.rationales)
    stats.update(
        expected_rows=len(expected), new_rows=store.new_rows,
        rows_per_s=generated / gen_time if gen_time else 0.0,
        wall_s=sum(r["wall_s"] for r in runs),
        teacher=cfg.large.name_or_path, backend=cfg.large.backend,
        samples_per_question=rc.samples_per_question, filter=rc.filter,
        f1_threshold=rc.f1_threshold if rc.filter == "f1" else None, require_faithful=rc.require_faithful,
        runs=runs,
    )
    return stats


def stage_identity(cfg: Config) -> str:
    """What the rationales depend on (:func:`lmcot.config.identity`; the actor pool's size and
    resources are run-only): the pipeline reruns this stage when it changes."""
    return identity(cfg.sections("data", "large", "generation", "rationales"))


def run(cfg: Config, run_dir: RunDir) -> dict:
    """Generate, score and filter teacher rationales into ``RUN/rationales/``; returns the stats.

    Rows already on disk are skipped, so a rerun after a crash (or with a larger
    dataset) only generates what is missing, and a rerun of a finished run adds nothing.
    Everything that can be wrong with the config or data fails here, before Ray starts.
    The stage's step record (:mod:`lmcot.runs.step`) is written last, so ``lmcot run`` skips
    what ``lmcot generate-rationales`` already did.
    """
    rc = cfg.rationales
    started = time.time()
    check_generation_settings(cfg)
    datasets = _load_datasets(cfg)
    context_tokenizer(cfg.large)  # a wrong teacher path fails now, not in every actor
    expected = set().union(*(expected_keys(ex, name, rc.samples_per_question) for name, ex, _ in datasets))
    with rationale_store(run_dir.rationales, rc.shard_rows, expected=len(expected)) as store:
        store.check_manifest(teacher_manifest(cfg))
        already = len(expected & store.written)
        log.info("rationales: %d rows expected, %d already written", len(expected), already)
        gen_started = time.time()
        for _ in range(PASSES):
            rows = [r for name, ex, aliases in datasets
                    for r in question_rows(ex, name, rc.samples_per_question, store.written, aliases)]
            if not rows:
                break
            ensure_ray()
            require_resources(teacher_need(cfg))
            try:
                for batch in build_dataset(cfg, rows).iter_batches(batch_size=None, batch_format="pyarrow"):
                    store.add(batch.to_pylist())
            finally:
                store.flush()  # rows already generated are kept even when the run fails or is interrupted
        gen_wall = time.time() - gen_started
        missing = expected - store.written
        if missing:
            raise RuntimeError(f"{len(missing)} rationale rows are still missing after the run "
                               f"(e.g. {sorted(missing)[:3]}); rerun the command to generate them")
        changed = refilter(run_dir.rationales, rc)
        if changed:
            log.info("rationales: the filter (%s) changed the decision on %d rows written before", rc.filter, changed)
        stats = _stats(cfg, run_dir, store, expected, gen_wall, time.time() - started)
        write_json(run_dir.rationale_stats, stats)
    log.info("rationales: %d rows (%d new), %d kept (%.1f%%)", stats["rows"], stats["new_rows"], stats["kept"],
             100 * stats["kept_ratio"])
    summary = {k: stats[k] for k in ("rows", "new_rows", "kept", "kept_ratio", "rows_per_s", "wall_s")} | {
        "dir": str(run_dir.rationales)}
    step.record(run_dir.rationales, "rationales", stage_identity(cfg), summary)
    return summary
