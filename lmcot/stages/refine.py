"""Rationale refinement: RL of the distilled small LM on large-LM rewards (Ray Train + DeepSpeed).

``lmcot refine`` / ``jobs/refine.py`` starts from ``RUN/distill/model/`` and trains it
with a GRPO-family algorithm (``refine.algorithm``: ``grpo`` or ``rloo``) on the
rewards of :mod:`lmcot.training.rewards`, weighted by ``refine.reward_weights``:

- the frozen large LM runs in its own Ray actors (:mod:`lmcot.stages.judge_actor`),
  started here for the length of the run and handed to every worker; rewards reach it
  in batched calls;
- a Ray Train ``TorchTrainer`` runs ``refine.scaling.num_workers`` workers with
  DeepSpeed ZeRO (stage 2 by default) and the worker loop of
  :mod:`lmcot.stages.refine_worker`: TRL's ``GRPOTrainer`` / ``RLOOTrainer`` for causal
  small LMs, the compact loop of :mod:`lmcot.training.grpo_seq2seq` for seq2seq ones (T5, which
  TRL cannot train). Both read the same config fields.

This module is the driver side: checks, training rows, identity, judges. The lifecycle
(skip, resource check, fit, checkpoints, export, summary) is distillation's too:
:func:`lmcot.stages.train_common.run_training`.

Outputs: ``RUN/refine/model/`` (loadable like distillation's model),
``RUN/refine/metrics.jsonl`` (per step: each reward component's mean, the total reward,
KL, loss, step time, rollouts/s and the share of the step spent in reward calls) and
``RUN/refine/curves.png``.

Identity: the distilled model's identity, the refine section, the large LM, generation,
data and seed, minus run-only fields (judge resources and batching, retries, gradient
checkpointing); changing only those reruns nothing.

Bad input (unknown or all-zero reward weights, no distilled model, ZeRO-3 with a
seq2seq model, a cluster too small for workers plus judges) fails in the driver
before any worker or judge starts.
"""

from __future__ import annotations

import contextlib
import logging
import random

from lmcot.config import Config, identity
from lmcot.runs.rundir import RunDir

log = logging.getLogger(__name__)


def prepare(cfg: Config, run_dir: RunDir) -> dict:
    """Check everything and build the training rows in the driver (no Ray, nothing started)."""
    from lmcot.models.loading import detect_family, load_tokenizer
    from lmcot.training.rewards import reward_plan

    rc = cfg.refine
    plan, aspects = reward_plan(rc.reward_weights, rc.aspect_mode, rc.quality_aspects)
    model_dir = run_dir.distill_model
    if not RunDir.has_model(model_dir):
        raise FileNotFoundError(
            f"refine starts from the distilled small LM, but {model_dir} holds no model (config.json): "
            f"run `lmcot distill --run-dir {run_dir.root}` first")
    family = detect_family(str(model_dir))
    if family == "seq2seq" and rc.scaling.zero_stage == 3:
        raise ValueError("refine.scaling.zero_stage=3 is not supported by the seq2seq GRPO loop (sampling would "
                         "need gathered weights): use zero_stage 2, which shards optimizer state and gradients")
    tokenizer = load_tokenizer(str(model_dir), family)
    from transformers import AutoConfig

    rows = build_rows(cfg, family, tokenizer, rc.max_steps * rc.prompts_per_step * rc.scaling.num_workers,
                      AutoConfig.from_pretrained(str(model_dir)))
    # A model folder without lmcot's record (copied in by hand) is known by its files' time.
    distilled = run_dir.model_identity("distill") or str(RunDir.model_config(model_dir).stat().st_mtime)
    inputs = cfg.sections("seed", "large", "generation", "data", "refine") | {
        "distilled": distilled, "chat_template": cfg.small.chat_template,
        "max_prompt_tokens": cfg.distill.max_source_tokens}
    return dict(model_path=str(model_dir), family=family, rows=rows, plan=plan, aspects=aspects,
                identity=identity(inputs))


def build_rows(cfg: Config, family: str, tokenizer, n: int, model_config=None) -> list[dict]:
    """``n`` seeded training questions as rows: the small LM's prompt plus the reward columns.

    Contexts are fitted to the large LM's tokenizer (the judge reads them); gold answers
    carry the dataset's aliases, so the task reward counts any of them.
    """
    from lmcot.datasets.data import load_split
    from lmcot.evaluation.evaluator import prepare_questions
    from lmcot.scoring.metrics import dataset_aliases, gold_answers
    from lmcot.models.loading import context_tokenizer
    from lmcot.prompting.fitting import PromptFitter
    from lmcot.prompting.roles import ROLES, rollout_tokens

    pool = []
    for spec in cfg.data.datasets:
        aliases = dataset_aliases(spec)
        pool += [(ex, aliases) for ex in load_split(spec, "train")]
    if not pool:
        raise ValueError("refine needs training questions: data.datasets has no train split with examples")
    random.Random(cfg.seed).shuffle(pool)
    pool = pool[:n]
    questions = prepare_questions([ex for ex, _ in pool], mode=cfg.data.context_mode,
                                  tokenizer=context_tokenizer(cfg.large), max_tokens=cfg.data.context_max_tokens)
    # Fitted as the served small LM fits them (same limit: small.max_input_tokens or the declared one).
    fitter = PromptFitter.for_model(cfg.small, tokenizer, family, model_config, field="small.max_input_tokens")
    reserve = rollout_tokens(cfg.refine, cfg.generation)
    rows = []
    for (ex, aliases), q in zip(pool, questions):
        golds = gold_answers(ex.answer, getattr(ex, "answer_id", ""), aliases)
        prompt = fitter.fit(ROLES["small"].build(q.question, q.context), reserve).text
        rows.append({"prompt": prompt, "question": q.question, "context": q.context, "answer": golds})
    return rows


def run(cfg: Config, run_dir: RunDir) -> dict:
    """RL-refine the distilled small LM; returns a summary (model folder, first/last rewards, throughput)."""
    from lmcot.planning.resources import refine_need
    from lmcot.prompting.roles import ROLES, rollout_tokens
    from lmcot.stages.refine_worker import WorkerConfig, normalize_log, train_worker
    from lmcot.stages.train_common import TrainingJob, run_training

    rc = cfg.refine
    prep = prepare(cfg, run_dir)

    def worker_config() -> dict:
        import ray

        return WorkerConfig(
            refine=rc, rows=ray.put(prep["rows"]), model_path=prep["model_path"], family=prep["family"],
            plan=prep["plan"], aspects=tuple(prep["aspects"]), seed=cfg.seed,
            max_new_tokens=rollout_tokens(rc, cfg.generation),
            answer_max_new_tokens=ROLES["answer"].reserve(cfg.generation),
            max_prompt_tokens=cfg.distill.max_source_tokens, metrics_path=str(run_dir.refine_metrics)).loop_config()

    def history(log_history: list[dict]) -> list[dict]:
        return [h for h in map(normalize_log, log_history) if "reward" in h]

    def summarize(lines: list[dict], metrics: dict) -> dict:
        from lmcot.evaluation.report import plot_refine_curves

        plot_refine_curves(lines, run_dir.curves("refine"))
        quarter = max(1, len(lines) // 4)
        return {"steps": len(lines), "reward_first": _mean(h["reward"] for h in lines[:quarter]),
                "reward_last": _mean(h["reward"] for h in lines[-quarter:]),
                "rollouts_per_s": _mean(h.get("rollouts_per_s", 0.0) for h in lines),
                "reward_share": _mean(h.get("reward_share", 0.0) for h in lines)}

    return run_training(cfg, run_dir, TrainingJob(
        stage="refine", identity=prep["identity"], worker=train_worker, worker_config=worker_config,
        base_model=prep["model_path"], needs=[refine_need(cfg)], services=lambda out: judges(cfg, out),
        describe=f"{prep['family']} model {prep['model_path']}, {rc.algorithm}, rewards {prep['plan']}, "
                 f"{rc.judge_num_actors} judge actors",
        history=history, summarize=summarize,
        meta={"family": prep["family"], "algorithm": rc.algorithm, "reward_weights": dict(rc.reward_weights),
              "aspect_mode": rc.aspect_mode}))


@contextlib.contextmanager
def judges(cfg: Config, out: dict):
    """The large-LM judge actors for the length of a run: yields their handles (``judges`` in the
    workers' config); at the end puts their batching figures in ``out["judge"]`` and stops them."""
    import ray

    from lmcot.stages.judge_actor import JudgeClient, start_judges

    rc = cfg.refine
    actors = start_judges(cfg.large, cfg.generation, num_actors=rc.judge_num_actors, num_cpus=rc.judge_num_cpus,
                          num_gpus=rc.judge_num_gpus, batch_size=rc.judge_batch_size,
                          batch_wait_ms=rc.judge_batch_wait_ms, timeout_s=rc.judge_timeout_s,
                          placement=cfg.large.placement())
    try:
        yield {"judges": actors}
        out["judge"] = JudgeClient(actors, rc.judge_timeout_s).stats()
    finally:
        for actor in actors:
            ray.kill(actor)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0
