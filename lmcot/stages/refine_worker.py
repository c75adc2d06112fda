"""Refinement inside each Ray Train worker: the judge client, then the model family's RL loop.

:mod:`lmcot.stages.refine` prepares the rows and starts the judge actors in the driver;
this module is what :func:`train_worker` runs on every worker:

- causal small LMs: TRL's ``GRPOTrainer`` / ``RLOOTrainer`` (:func:`build_causal_trainer`)
  with the lmcot rewards as ``reward_funcs`` and ``reward_weights``, checkpointed by
  :class:`~lmcot.stages.train_common.RayReportCallback` like distillation;
- seq2seq small LMs (T5, which TRL cannot train): the loop of :mod:`lmcot.training.grpo_seq2seq`
  on a ``deepspeed.initialize`` engine, whose checkpoints (DeepSpeed shards, the model,
  the tokenizer and a ``trainer_state.json`` with the step and log history) go through
  the same :func:`~lmcot.stages.train_common.report_checkpoint`, so resume and export
  read both the same way.

Rank 0 appends each step to ``RUN/refine/metrics.jsonl`` as it finishes (cut back to the
resumed step after a restart); every step's metrics are also kept in the checkpoint's
log history, from which the driver writes the final file.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from transformers import TrainerCallback

from lmcot.config import RefineConfig
from lmcot.evaluation.report import append_jsonl, truncate_jsonl
from lmcot.runs.rundir import RunDir, write_atomic

log = logging.getLogger(__name__)

TRL_KEYS = {"loss": "loss", "kl": "kl", "reward": "reward", "reward_std": "reward_std",
            "completions/mean_length": "completion_tokens", "clip_ratio/region_mean": "clip_fraction",
            "frac_reward_zero_std": "frac_reward_zero_std"}


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


def train_worker(config: dict) -> None:
    """One worker: the reward judge client, then the family's training loop."""
    import ray

    from lmcot.config.loader import build
    from lmcot.training.rewards import RewardJudge
    from lmcot.stages.judge_actor import JudgeClient

    rc = build(RefineConfig, config["refine"])
    rows = ray.get(config["rows"])
    judge = RewardJudge(JudgeClient(config["judges"], rc.judge_timeout_s), aspects=config["aspects"],
                        answer_max_new_tokens=config["answer_max_new_tokens"])
    if config["family"] == "seq2seq":
        train_seq2seq(config, rc, rows, judge)
    else:
        train_causal(config, rc, rows, judge)


def train_causal(config: dict, rc: RefineConfig, rows: list[dict], judge) -> None:
    import ray.train

    from lmcot.training.rewards import bind_rewards
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


def seq2seq_engine(model_path: str, rc: RefineConfig):
    """The DeepSpeed engine of the seq2seq loop and the frozen reference (None when ``beta`` is 0)."""
    import copy

    import deepspeed

    from lmcot.training.deepspeed_config import deepspeed_config
    from lmcot.stages.train_common import auto_model_class

    checkpointing = rc.scaling.gradient_checkpointing
    # No dropout with checkpointing: the loop's forward then runs in train mode (see TrainModeForward).
    model = auto_model_class("seq2seq").from_pretrained(model_path, use_safetensors=True,
                                                        **({"dropout_rate": 0.0} if checkpointing else {}))
    ref = copy.deepcopy(model).eval().requires_grad_(False) if rc.beta > 0 else None
    if checkpointing:
        model.gradient_checkpointing_enable()
    ds_config = deepspeed_config(rc.scaling, hf_trainer=False, micro_batch=rc.prompts_per_step * rc.num_generations,
                                 lr=rc.learning_rate)
    engine, *_ = deepspeed.initialize(model=model, config=ds_config,
                                      model_parameters=[p for p in model.parameters() if p.requires_grad])
    if ref is not None:
        ref.to(engine.device, dtype=next(engine.module.parameters()).dtype)
    return (TrainModeForward(engine) if checkpointing else engine), ref


class TrainModeForward:
    """The engine, whose forward passes with gradients run in train mode.

    The seq2seq loop keeps the policy in eval mode (no dropout, so sampling and scoring see
    one policy), but transformers recomputes activations only in train mode. With dropout
    at 0 (set at load), train mode computes the very same function, so gradient
    checkpointing takes effect without changing a number.
    """

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def __call__(self, **inputs):
        module = self.engine.module
        was_training = module.training
        module.train()
        try:
            return self.engine(**inputs)
        finally:
            module.train(was_training)


def train_seq2seq(config: dict, rc: RefineConfig, rows: list[dict], judge) -> None:
    """The lmcot GRPO loop on a DeepSpeed engine, checkpointed like the HF trainers' runs."""
    import ray.train

    from lmcot.training.grpo_seq2seq import train
    from lmcot.models.loading import load_tokenizer
    from lmcot.training.rewards import score_batch
    from lmcot.stages.train_common import resume_from

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    tokenizer = load_tokenizer(config["model_path"], "seq2seq")
    tokenizer.truncation_side = "left"  # an over-long prompt keeps its question, as in distillation
    engine, ref = seq2seq_engine(config["model_path"], rc)
    start, history = 0, []
    with resume_from() as path:
        if path is not None:
            engine.load_checkpoint(str(RunDir.deepspeed_state(path)))
            state = json.loads(RunDir.trainer_state(path).read_text())
            start, history = state["global_step"], state["log_history"]
    metrics_path = Path(config["metrics_path"])
    if rank == 0:
        truncate_jsonl(metrics_path, start)

    def reward_fn(prompts, completions, columns):
        return score_batch(prompts, completions, plan=config["plan"], aspect_mode=rc.aspect_mode, judge=judge,
                           task_metric=rc.task_metric, **columns)

    def on_step(step: int, metrics: dict) -> None:
        metrics["resumed_from_step"] = start
        history.append(metrics)
        if rank == 0:
            append_jsonl(metrics_path, metrics)
            log.info("refine step %d: reward %.4f kl %.4f loss %.4f (%.1f rollouts/s, %.0f%% in rewards)", step,
                     metrics["reward"], metrics["kl"], metrics["loss"], metrics["rollouts_per_s"],
                     100 * metrics["reward_share"])
        if step % rc.save_steps == 0 or step == rc.max_steps:
            save_checkpoint(engine, tokenizer, RunDir.local_checkpoint(config["output_dir"], step), step, history)

    train(engine, tokenizer, rows, reward_fn=reward_fn, cfg=rc, max_new_tokens=config["max_new_tokens"],
          ref_model=ref, start_step=start, seed=config["seed"], rank=rank, world_size=world,
          max_prompt_tokens=config["max_prompt_tokens"], on_step=on_step)


def save_checkpoint(engine, tokenizer, folder: Path, step: int, history: list[dict]) -> None:
    """Every rank writes its DeepSpeed shards; rank 0 the model, tokenizer and step/history; then
    :func:`~lmcot.stages.train_common.report_checkpoint` hands the folder to Ray Train."""
    import ray.train

    from lmcot.stages.train_common import report_checkpoint

    engine.save_checkpoint(str(RunDir.deepspeed_state(folder)), tag=f"global_step{step}")
    if ray.train.get_context().get_world_rank() == 0:
        engine.module.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        write_atomic(RunDir.trainer_state(folder), json.dumps({"global_step": step, "log_history": history}))
    latest = history[-1] if history else {}
    report_checkpoint(folder, step, {"step": step, "reward": latest.get("reward", 0.0),
                                     "resumed_from_step": latest.get("resumed_from_step", 0)})


def build_causal_trainer(model_path: str, rows: list[dict], rc: RefineConfig, *, common: dict, max_new_tokens: int,
                         reward_funcs: list, reward_weights: list[float]):
    """TRL's ``GRPOTrainer`` (or ``RLOOTrainer``) for a causal small LM, from lmcot's config fields.

    ``common``: ``TrainingArguments`` keywords (``train_common.hf_training_args`` under Ray
    Train; plain CPU ones in a single process).
    """
    from datasets import Dataset

    from lmcot.models.loading import load_tokenizer
    from lmcot.stages.train_common import auto_model_class

    tokenizer = load_tokenizer(model_path, "causal")
    model = auto_model_class("causal").from_pretrained(model_path, use_safetensors=True)
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
            truncate_jsonl(Path(self.metrics_path), state.global_step)

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
            append_jsonl(Path(self.metrics_path), normalize_log(state.log_history[-1]))
