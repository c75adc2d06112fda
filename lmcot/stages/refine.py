"""Rationale refinement: RL of the distilled small LM on large-LM rewards (Ray Train + DeepSpeed).

``lmcot refine`` / ``jobs/refine.py`` starts from ``RUN/distill/model/`` and trains it
with a GRPO-family algorithm (``refine.algorithm``: ``grpo`` or ``rloo``) on the
rewards of :mod:`lmcot.rewards`, weighted by ``refine.reward_weights``:

- the frozen large LM runs in its own Ray actors (:mod:`lmcot.stages.judge_actor`),
  started here and handed to every worker; rewards reach it in batched calls;
- a Ray Train ``TorchTrainer`` runs ``refine.scaling.num_workers`` workers with
  DeepSpeed ZeRO (stage 2 by default). Causal small LMs train with TRL's
  ``GRPOTrainer`` / ``RLOOTrainer`` (the lmcot rewards as ``reward_funcs`` plus
  ``reward_weights``); seq2seq small LMs (T5, which TRL cannot train) with the compact
  loop of :mod:`lmcot.grpo_seq2seq` on a ``deepspeed.initialize`` engine. Both read the
  same config fields.
- Checkpoints every ``refine.save_steps`` steps go to ``RUN/refine/checkpoints/``
  the way distillation's do (:mod:`lmcot.stages.train_common`); a replaced worker or
  a rerun of the same command resumes from the latest one.

Outputs: ``RUN/refine/model/`` (``save_pretrained``, loadable like distillation's
model), ``RUN/refine/metrics.jsonl`` (per step: each reward component's mean, the total
reward, KL, loss, step time, rollouts/s and the share of the step spent in reward
calls) and ``RUN/refine/curves.png``.

Bad input (unknown or all-zero reward weights, no distilled model, ZeRO-3 with a
seq2seq model, a cluster too small for workers plus judges) fails in the driver
before any worker or judge starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path

from transformers import TrainerCallback

from lmcot.config import Config, RefineConfig, fingerprint_dict, to_dict
from lmcot.rundir import RunDir, write_atomic

log = logging.getLogger(__name__)

MODEL_META = "lmcot_model.json"
TRL_KEYS = {"loss": "loss", "kl": "kl", "reward": "reward", "reward_std": "reward_std",
            "completions/mean_length": "completion_tokens", "clip_ratio/region_mean": "clip_fraction",
            "frac_reward_zero_std": "frac_reward_zero_std"}


# -- driver --------------------------------------------------------------------------------
def prepare(cfg: Config, run_dir: RunDir) -> dict:
    """Check everything and build the training rows in the driver (no Ray, nothing started)."""
    from lmcot.models import detect_family, load_tokenizer
    from lmcot.rewards import reward_plan

    rc = cfg.refine
    plan, aspects = reward_plan(rc.reward_weights, rc.aspect_mode, rc.quality_aspects)
    model_dir = run_dir.distill_model
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"refine starts from the distilled small LM, but {model_dir} holds no model (config.json): "
            f"run `lmcot distill --run-dir {run_dir.root}` first")
    family = detect_family(str(model_dir))
    if family == "seq2seq" and rc.scaling.zero_stage == 3:
        raise ValueError("refine.scaling.zero_stage=3 is not supported by the seq2seq GRPO loop (sampling would "
                         "need gathered weights): use zero_stage 2, which shards optimizer state and gradients")
    tokenizer = load_tokenizer(str(model_dir), family)
    rows = build_rows(cfg, family, tokenizer, rc.max_steps * rc.prompts_per_step * rc.scaling.num_workers)
    meta_file = model_dir / MODEL_META
    base = meta_file.read_text() if meta_file.is_file() else str((model_dir / "config.json").stat().st_mtime)
    digest = hashlib.sha256(json.dumps(
        [base, to_dict(rc), fingerprint_dict(cfg.large), to_dict(cfg.generation), to_dict(cfg.data), cfg.seed],
        sort_keys=True).encode()).hexdigest()[:12]
    return dict(model_path=str(model_dir), family=family, rows=rows, plan=plan, aspects=aspects, fingerprint=digest)


def build_rows(cfg: Config, family: str, tokenizer, n: int) -> list[dict]:
    """``n`` seeded training questions as rows: the small LM's prompt plus the reward columns.

    Contexts are fitted to the large LM's tokenizer (the judge reads them); gold answers
    carry the dataset's aliases, so the task reward counts any of them.
    """
    from lmcot.data import load_split
    from lmcot.evaluation import prepare_questions
    from lmcot.metrics import load_aliases
    from lmcot.models import context_tokenizer
    from lmcot.prompts import small_rationale_prompt
    from lmcot.sft_data import format_prompt

    pool = []
    for spec in cfg.data.datasets:
        aliases = load_aliases(spec.aliases_path) if spec.aliases_path else {}
        pool += [(ex, aliases) for ex in load_split(spec, "train")]
    if not pool:
        raise ValueError("refine needs training questions: data.datasets has no train split with examples")
    random.Random(cfg.seed).shuffle(pool)
    pool = pool[:n]
    questions = prepare_questions([ex for ex, _ in pool], mode=cfg.data.context_mode,
                                  tokenizer=context_tokenizer(cfg.large), max_tokens=cfg.data.context_max_tokens)
    rows = []
    for (ex, aliases), q in zip(pool, questions):
        golds = [ex.answer] + [a for a in aliases.get(getattr(ex, "answer_id", ""), ()) if a != ex.answer]
        prompt = format_prompt(tokenizer, small_rationale_prompt(q.question, q.context), family,
                               cfg.small.chat_template)
        rows.append({"prompt": prompt, "question": q.question, "context": q.context, "answer": golds})
    return rows


def refine_resources(cfg: Config) -> dict[str, float]:
    """Ray resources one refinement run holds: training workers plus judge actors, each with
    its model's placement resource (``small.ray_resource`` / ``large.ray_resource``)."""
    from lmcot.stages.cluster import add_resources

    rc = cfg.refine
    small = {k: rc.scaling.num_workers * v for k, v in cfg.small.placement().items()}
    large = {k: rc.judge_num_actors * v for k, v in cfg.large.placement().items()}
    return add_resources(rc.resources(), small, large)


def check_judges_fit(cfg: Config) -> None:
    """Workers plus judge actors must fit the local cluster (a remote one may still grow: warn)."""
    from lmcot.stages.cluster import require_resources

    rc = cfg.refine
    require_resources(
        refine_resources(cfg),
        f"refine runs {rc.scaling.num_workers} training workers and {rc.judge_num_actors} judge actors",
        "lower refine.judge_num_cpus / judge_num_gpus / judge_num_actors or refine.scaling.num_workers / "
        "cpus_per_worker",
    )


def run(cfg: Config, run_dir: RunDir) -> dict:
    """RL-refine the distilled small LM; returns a summary (model folder, first/last rewards, throughput)."""
    import ray

    from lmcot.stages.cluster import ensure_ray
    from lmcot.stages.judge_actor import JudgeClient, start_judges
    from lmcot.stages.train_common import check_cluster_fits, export_model, fit, read_trainer_state

    rc = cfg.refine
    prep = prepare(cfg, run_dir)
    name = f"refine-{prep['fingerprint']}"
    meta_file = run_dir.refine_model / MODEL_META
    if meta_file.is_file() and json.loads(meta_file.read_text()).get("fingerprint") == prep["fingerprint"]:
        log.info("refine: %s already holds the model of run %s; nothing to do", run_dir.refine_model, name)
        return {"model": str(run_dir.refine_model), "skipped": True, **json.loads(meta_file.read_text())}

    ensure_ray()
    check_cluster_fits(rc.scaling, "refine", cfg.small.placement())
    check_judges_fit(cfg)
    log.info("refine: %s model %s, %s, rewards %s, %d workers (ZeRO-%d), %d judge actors -> run %s",
             prep["family"], prep["model_path"], rc.algorithm, prep["plan"], rc.scaling.num_workers,
             rc.scaling.zero_stage, rc.judge_num_actors, name)
    judges = start_judges(cfg.large, cfg.generation, num_actors=rc.judge_num_actors, num_cpus=rc.judge_num_cpus,
                          num_gpus=rc.judge_num_gpus, batch_size=rc.judge_batch_size,
                          batch_wait_ms=rc.judge_batch_wait_ms, timeout_s=rc.judge_timeout_s,
                          placement=cfg.large.placement())
    config = {
        "rows": ray.put(prep["rows"]), "judges": judges, "model_path": prep["model_path"], "family": prep["family"],
        "plan": prep["plan"], "aspects": prep["aspects"], "refine": to_dict(rc), "seed": cfg.seed,
        "max_new_tokens": rc.max_new_tokens or cfg.generation.rationale_max_new_tokens,
        "answer_max_new_tokens": cfg.generation.answer_max_new_tokens,
        "max_prompt_tokens": cfg.distill.max_source_tokens, "metrics_path": str(run_dir.refine_metrics),
    }
    started = time.time()
    try:
        result = fit(train_worker, config, scaling=rc.scaling, storage_path=run_dir.refine_checkpoints, name=name,
                     placement=cfg.small.placement())
        judge_stats = JudgeClient(judges, rc.judge_timeout_s).stats()
    finally:
        for actor in judges:
            ray.kill(actor)
    if result.checkpoint is None:
        raise RuntimeError(f"refine run {name} finished without a checkpoint; see the worker logs above")
    history = [normalize_log(e) for e in read_trainer_state(result.checkpoint).get("log_history", [])]
    history = [h for h in history if "reward" in h]
    write_metrics(run_dir.refine_metrics, history)
    plot_curves(history, run_dir.refine / "curves.png")
    meta = {"fingerprint": prep["fingerprint"], "run": name, "base_model": prep["model_path"],
            "family": prep["family"], "algorithm": rc.algorithm, "reward_weights": dict(rc.reward_weights),
            "aspect_mode": rc.aspect_mode, "step": history[-1]["step"] if history else 0,
            "checkpoint": result.checkpoint.path}
    export_model(result.checkpoint, run_dir.refine_model, metadata=meta)
    first, last = history[: max(1, len(history) // 4)], history[-max(1, len(history) // 4):]
    return {"model": str(run_dir.refine_model), "skipped": False, **meta, "steps": len(history),
            "reward_first": _mean(h["reward"] for h in first), "reward_last": _mean(h["reward"] for h in last),
            "resumed_from_step": (result.metrics or {}).get("resumed_from_step", 0),
            "rollouts_per_s": _mean(h.get("rollouts_per_s", 0.0) for h in history),
            "reward_share": _mean(h.get("reward_share", 0.0) for h in history),
            "judge": judge_stats, "metrics": str(run_dir.refine_metrics), "wall_s": round(time.time() - started, 1)}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def normalize_log(entry: dict) -> dict:
    """One step's metrics under lmcot's names, whichever trainer logged them (TRL or the lmcot loop).

    >>> normalize_log({"step": 3, "rewards/task/mean": 0.5, "rewards/task/std": 0.1, "reward": 0.5, "kl": 0.01})
    {'step': 3, 'reward/task': 0.5, 'reward': 0.5, 'kl': 0.01}
    """
    out = {}
    for key, value in entry.items():
        if key.startswith("rewards/") and key.endswith("/mean"):
            out["reward/" + key[len("rewards/"):-len("/mean")]] = value
        elif key in TRL_KEYS:
            out[TRL_KEYS[key]] = value
        elif not key.startswith(("rewards/", "completions/", "clip_ratio/")):
            out[key] = value
    return out


def write_metrics(path: Path, history: list[dict]) -> None:
    """``metrics.jsonl``: one JSON object per step."""
    write_atomic(Path(path), "".join(json.dumps(h, sort_keys=True) + "\n" for h in history))


def plot_curves(history: list[dict], path: Path) -> None:
    """Reward components, total reward, KL, loss and the reward-call share of step time, per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    components = sorted({k for h in history for k in h if k.startswith("reward/")})
    for key in ["reward", *components]:
        axes[0].plot(steps, [h.get(key) for h in history], label=key, linewidth=2.5 if key == "reward" else 1)
    axes[0].set_title("rewards (means)")
    if history:
        axes[0].legend(fontsize=7)
    for ax, key, title in ((axes[1], "kl", "KL to the distilled model"), (axes[2], "loss", "loss"),
                           (axes[3], "reward_share", "share of step time in reward calls")):
        ax.plot(steps, [h.get(key) for h in history])
        ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- inside each Ray Train worker ------------------------------------------------------------
def train_worker(config: dict) -> None:
    """One worker: the reward judge client, then the family's training loop."""
    import ray

    from lmcot.config.loader import build
    from lmcot.rewards import RewardJudge
    from lmcot.stages.judge_actor import JudgeClient

    rc = build(RefineConfig, config["refine"])
    rows = ray.get(config["rows"])
    judge = RewardJudge(JudgeClient(config["judges"], rc.judge_timeout_s), aspects=config["aspects"],
                        answer_max_new_tokens=config["answer_max_new_tokens"])
    if config["family"] == "seq2seq":
        _train_seq2seq(config, rc, rows, judge)
    else:
        _train_causal(config, rc, rows, judge)


def _train_causal(config: dict, rc: RefineConfig, rows: list[dict], judge) -> None:
    import ray.train

    from lmcot.rewards import bind_rewards
    from lmcot.stages.train_common import RayReportCallback, hf_training_args, resume_from

    world = ray.train.get_context().get_world_size()
    per_device = rc.prompts_per_step * rc.num_generations
    common = hf_training_args(rc.scaling, output_dir=config["output_dir"], per_device_batch_size=per_device,
                              gradient_accumulation_steps=1, learning_rate=rc.learning_rate, seed=config["seed"])
    plan = config["plan"]
    trainer = build_causal_trainer(
        config["model_path"], rows, rc, common=common, max_new_tokens=config["max_new_tokens"],
        reward_funcs=bind_rewards(plan, judge=judge, task_metric=rc.task_metric), reward_weights=list(plan.values()))
    trainer.add_callback(StepMetrics(judge, rollouts=per_device * world, metrics_path=config["metrics_path"]))
    trainer.add_callback(RayReportCallback())
    with resume_from() as checkpoint:
        trainer.train(resume_from_checkpoint=checkpoint)


def _train_seq2seq(config: dict, rc: RefineConfig, rows: list[dict], judge) -> None:
    """The lmcot GRPO loop on a DeepSpeed engine, checkpointed like the HF trainers' runs."""
    import copy

    import deepspeed
    import ray.train
    from transformers import AutoModelForSeq2SeqLM

    from lmcot.deepspeed_config import deepspeed_config
    from lmcot.grpo_seq2seq import train
    from lmcot.models import load_tokenizer
    from lmcot.rewards import score_batch
    from lmcot.stages.train_common import resume_from

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    tokenizer = load_tokenizer(config["model_path"], "seq2seq")
    tokenizer.truncation_side = "left"  # an over-long prompt keeps its question, as in distillation
    model = AutoModelForSeq2SeqLM.from_pretrained(config["model_path"], use_safetensors=True)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if rc.beta > 0 else None
    ds_config = deepspeed_config(rc.scaling, hf_trainer=False, micro_batch=rc.prompts_per_step * rc.num_generations,
                                 lr=rc.learning_rate)
    engine, *_ = deepspeed.initialize(model=model, config=ds_config,
                                      model_parameters=[p for p in model.parameters() if p.requires_grad])
    if ref is not None:
        ref.to(engine.device, dtype=next(engine.module.parameters()).dtype)
    start, history = 0, []
    with resume_from() as path:
        if path is not None:
            engine.load_checkpoint(str(Path(path) / "deepspeed"))
            state = json.loads((Path(path) / "trainer_state.json").read_text())
            start, history = state["global_step"], state["log_history"]
    metrics_path = Path(config["metrics_path"])
    if rank == 0:
        truncate_metrics(metrics_path, start)

    def reward_fn(prompts, completions, columns):
        return score_batch(prompts, completions, plan=config["plan"], aspect_mode=rc.aspect_mode, judge=judge,
                           task_metric=rc.task_metric, **columns)

    def on_step(step: int, metrics: dict) -> None:
        metrics["resumed_from_step"] = start
        history.append(metrics)
        if rank == 0:
            append_metrics(metrics_path, metrics)
            log.info("refine step %d: reward %.4f kl %.4f loss %.4f (%.1f rollouts/s, %.0f%% in rewards)", step,
                     metrics["reward"], metrics["kl"], metrics["loss"], metrics["rollouts_per_s"],
                     100 * metrics["reward_share"])
        if step % rc.save_steps == 0 or step == rc.max_steps:
            _save_checkpoint(engine, tokenizer, Path(config["output_dir"]) / f"checkpoint-{step}", step, history)

    train(engine, tokenizer, rows, reward_fn=reward_fn, cfg=rc, max_new_tokens=config["max_new_tokens"],
          ref_model=ref, start_step=start, seed=config["seed"], rank=rank, world_size=world,
          max_prompt_tokens=config["max_prompt_tokens"], on_step=on_step)


def _save_checkpoint(engine, tokenizer, folder: Path, step: int, history: list[dict]) -> None:
    """Every rank writes its DeepSpeed shards; rank 0 the model, tokenizer and step/history; then the
    node's local rank 0 reports the folder to Ray Train (the layout ``train_common`` resumes and exports)."""
    import ray.train
    import torch.distributed as dist

    from lmcot.stages.train_common import maybe_chaos_exit

    ctx = ray.train.get_context()
    engine.save_checkpoint(str(folder / "deepspeed"), tag=f"global_step{step}")
    if ctx.get_world_rank() == 0:
        engine.module.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        write_atomic(folder / "trainer_state.json", json.dumps({"global_step": step, "log_history": history}))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if ctx.get_local_rank() == 0 else None
    latest = history[-1] if history else {}
    ray.train.report({"step": step, "reward": latest.get("reward", 0.0),
                      "resumed_from_step": latest.get("resumed_from_step", 0)}, checkpoint=checkpoint,
                     checkpoint_dir_name=f"checkpoint-{step:06d}",
                     delete_local_checkpoint_after_upload=checkpoint is not None)
    maybe_chaos_exit(ctx)  # the failure drill of train_common, inert unless its variable is set


def build_causal_trainer(model_path: str, rows: list[dict], rc: RefineConfig, *, common: dict, max_new_tokens: int,
                         reward_funcs: list, reward_weights: list[float]):
    """TRL's ``GRPOTrainer`` (or ``RLOOTrainer``) for a causal small LM, from lmcot's config fields.

    ``common``: ``TrainingArguments`` keywords (``train_common.hf_training_args`` under Ray
    Train; plain CPU ones in a single process).
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from lmcot.models import load_tokenizer

    tokenizer = load_tokenizer(model_path, "causal")
    model = AutoModelForCausalLM.from_pretrained(model_path, use_safetensors=True)
    shared = dict(
        **common, max_steps=rc.max_steps, save_steps=rc.save_steps, logging_steps=1, lr_scheduler_type="constant",
        num_generations=rc.num_generations, max_completion_length=max_new_tokens, temperature=rc.temperature,
        top_p=rc.top_p, beta=rc.beta, epsilon=rc.epsilon, num_iterations=rc.num_iterations,
        reward_weights=reward_weights, remove_unused_columns=False,
    )
    if rc.algorithm == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(**shared, loss_type=rc.loss_type, scale_rewards=rc.scale_rewards)
        cls = GRPOTrainer
    else:
        from trl import RLOOConfig, RLOOTrainer

        args = RLOOConfig(**shared, normalize_advantages=rc.scale_rewards != "none")
        cls = RLOOTrainer
    return cls(model=model, reward_funcs=reward_funcs, args=args, train_dataset=Dataset.from_list(rows),
               processing_class=tokenizer)


class StepMetrics(TrainerCallback):
    """Adds step time, rollouts/s and the share of the step spent in large-LM reward calls to
    every logged TRL step, and appends the step to ``metrics.jsonl`` live (rank 0)."""

    def __init__(self, judge, *, rollouts: int, metrics_path: str | None = None):
        self.judge, self.rollouts, self.metrics_path = judge, rollouts, metrics_path
        self._t0 = 0.0
        self._judge0 = 0.0
        self._last: dict = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if self.metrics_path and state.is_world_process_zero:
            truncate_metrics(Path(self.metrics_path), state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0, self._judge0 = time.perf_counter(), self.judge.seconds

    def on_step_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self._t0
        self._last = {"step_seconds": seconds, "reward_share": (self.judge.seconds - self._judge0) / max(seconds, 1e-9),
                      "rollouts": self.rollouts, "rollouts_per_s": self.rollouts / max(seconds, 1e-9)}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.log_history or "reward" not in state.log_history[-1]:
            return
        state.log_history[-1].update(self._last)  # kept in trainer_state.json, so in every checkpoint
        if self.metrics_path and state.is_world_process_zero:
            append_metrics(Path(self.metrics_path), normalize_log(state.log_history[-1]))


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines of steps after ``step`` (a resumed run rewrites them)."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        write_atomic(path, "".join(line + "\n" for line in keep))


def append_metrics(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
