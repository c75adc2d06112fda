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

The driver hands every worker one :class:`WorkerConfig`. ``refine.algorithm`` picks the TRL
trainer through :data:`TRL_TRAINERS` and the seq2seq loop's estimator and loss through the
registries of :mod:`lmcot.training.rl`. ``refine.skip_flat_steps`` is the seq2seq loop's: TRL
1.16's trainers have no way to skip an optimizer step from a reward, so on a step whose task
reward is flat in every group they update on what the other rewards (and the KL term) leave.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from lmcot.config import RefineConfig
from lmcot.runs.jsonl import append_jsonl, truncate_jsonl
from lmcot.runs.rundir import RunDir, write_atomic
from lmcot.training.rl import lookup

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


@dataclass(frozen=True)
class WorkerConfig:
    """What every refinement worker reads: built by the driver (:func:`lmcot.stages.refine.run`),
    completed with the judge handles and the output folder when Ray Train starts the workers."""

    refine: RefineConfig
    rows: Any
    """The training rows (``prompt`` plus the reward columns) as a Ray object ref: shipped once."""
    model_path: str
    """The distilled small LM: the policy's start and the frozen reference."""
    family: str
    """``seq2seq`` (the lmcot loop) or ``causal`` (TRL's trainers)."""
    plan: dict[str, float]
    """Reward name -> weight (:func:`lmcot.training.rewards.reward_plan`)."""
    aspects: tuple[str, ...]
    """The aspects the judge scores."""
    seed: int
    max_new_tokens: int
    """Rollout length (:func:`lmcot.prompting.roles.rollout_tokens`)."""
    answer_max_new_tokens: int
    """The large LM's answer length in the task reward (the ``answer`` role's reserve)."""
    max_prompt_tokens: int
    metrics_path: str
    """``RUN/refine/metrics.jsonl``, appended to live by rank 0."""
    judges: tuple = ()
    """The judge actors' handles (from the stage's judge service)."""
    output_dir: str = ""
    """The node-local folder checkpoints are written into (from :func:`~lmcot.stages.train_common.fit`)."""

    def loop_config(self) -> dict:
        """Ray Train's ``train_loop_config`` (a dict, to which the judge service and ``fit`` add keys)."""
        return {"worker": self}

    @classmethod
    def from_loop_config(cls, config: dict) -> "WorkerConfig":
        """The config :meth:`loop_config` made, with the keys added on the way to the workers.

        >>> wc = WorkerConfig(RefineConfig(), None, "m", "seq2seq", {"task": 1.0}, (), 0, 8, 4, 64, "/tmp/log")
        >>> got = WorkerConfig.from_loop_config({**wc.loop_config(), "judges": ["j"], "output_dir": "/tmp/o"})
        >>> got.judges, got.output_dir, got.plan
        (('j',), '/tmp/o', {'task': 1.0})
        """
        return replace(config["worker"], judges=tuple(config["judges"]), output_dir=config["output_dir"])


def train_worker(config: dict) -> None:
    """One worker: the reward judge client, then the family's training loop."""
    import ray

    from lmcot.training.rewards import RewardJudge
    from lmcot.stages.judge_actor import JudgeClient

    wc = WorkerConfig.from_loop_config(config)
    rows = ray.get(wc.rows)
    judge = RewardJudge(JudgeClient(list(wc.judges), wc.refine.judge_timeout_s), aspects=wc.aspects,
                        answer_max_new_tokens=wc.answer_max_new_tokens)
    if wc.family == "seq2seq":
        train_seq2seq(wc, rows, judge)
    else:
        train_causal(wc, rows, judge)


def train_causal(wc: WorkerConfig, rows: list[dict], judge) -> None:
    import ray.train

    from lmcot.training.grpo_seq2seq import TASK_REWARD
    from lmcot.training.rewards import bind_rewards
    from lmcot.stages.train_common import RayReportCallback, hf_training_args, resume_from

    rc = wc.refine
    world = ray.train.get_context().get_world_size()
    per_device = rc.prompts_per_step * rc.num_generations
    common = hf_training_args(rc.scaling, output_dir=wc.output_dir, per_device_batch_size=per_device,
                              gradient_accumulation_steps=1, learning_rate=rc.learning_rate, seed=wc.seed)
    if rc.skip_flat_steps and TASK_REWARD in wc.plan and ray.train.get_context().get_world_rank() == 0:
        log.warning("refine.skip_flat_steps applies to the seq2seq loop only: TRL's %s trainer updates on every "
                    "step, also where the task reward is flat in every group", rc.algorithm)
    trainer = build_causal_trainer(
        wc.model_path, rows, rc, common=common, max_new_tokens=wc.max_new_tokens,
        reward_funcs=bind_rewards(wc.plan, judge=judge, task_metric=rc.task_metric),
        reward_weights=list(wc.plan.values()))
    trainer.add_callback(StepMetrics(judge, rollouts=per_device * world, metrics_path=wc.metrics_path))
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


def train_seq2seq(wc: WorkerConfig, rows: list[dict], judge) -> None:
    """The lmcot GRPO loop on a DeepSpeed engine, checkpointed like the HF trainers' runs."""
    import ray.train

    from lmcot.training.grpo_seq2seq import train
    from lmcot.models.loading import load_tokenizer
    from lmcot.training.rewards import score_batch
    from lmcot.stages.train_common import resume_from

    rc = wc.refine
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    tokenizer = load_tokenizer(wc.model_path, "seq2seq")
    tokenizer.truncation_side = "left"  # an over-long prompt keeps its question, as in distillation
    engine, ref = seq2seq_engine(wc.model_path, rc)
    start, history = 0, []
    with resume_from() as path:
        if path is not None:
            engine.load_checkpoint(str(RunDir.deepspeed_state(path)))
            state = json.loads(RunDir.trainer_state(path).read_text())
            start, history = state["global_step"], state["log_history"]
    metrics_path = Path(wc.metrics_path)
    if rank == 0:
        truncate_jsonl(metrics_path, start)

    def reward_fn(prompts, completions, columns):
        return score_batch(prompts, completions, plan=wc.plan, aspect_mode=rc.aspect_mode, judge=judge,
                           task_metric=rc.task_metric, **columns)

    def on_step(step: int, metrics: dict) -> None:
        metrics["resumed_from_step"] = start
        history.append(metrics)
        if rank == 0:
            append_jsonl(metrics_path, metrics)
            log.info("refine step %d: reward %.4f kl %.4f loss %.4f (%.1f rollouts/s, %.0f%% in rewards)%s", step,
                     metrics["reward"], metrics["kl"], metrics["loss"], metrics["rollouts_per_s"],
                     100 * metrics["reward_share"],
                     f"; task reward flat in every group{', no update' if rc.skip_flat_steps else ''} "
                     f"({metrics['flat_steps_total']} such steps)" if metrics["flat_task_reward_step"] else "")
        if step % rc.save_steps == 0 or step == rc.max_steps:
            save_checkpoint(engine, tokenizer, RunDir.local_checkpoint(wc.output_dir, step), step, history)

    train(engine, tokenizer, rows, reward_fn=reward_fn, cfg=rc, max_new_tokens=wc.max_new_tokens,
          ref_model=ref, start_step=start, seed=wc.seed, rank=rank, world_size=world,
          max_prompt_tokens=wc.max_prompt_tokens, on_step=on_step,
          flat_steps_before=sum(bool(h.get("flat_task_reward_step")) for h in history))


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
    cls, config_cls, own = lookup(TRL_TRAINERS, rc.algorithm, "refine.algorithm", "TRL trainer")(rc)
    return cls(model=model, reward_funcs=reward_funcs, args=config_cls(**shared, **own),
               train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def _trl_grpo(rc: RefineConfig):
    from trl import GRPOConfig, GRPOTrainer

    return GRPOTrainer, GRPOConfig, dict(loss_type=rc.loss_type, scale_rewards=rc.scale_rewards,
                                         multi_objective_aggregation=rc.reward_aggregation)


def _trl_rloo(rc: RefineConfig):
    from trl import RLOOConfig, RLOOTrainer

    return RLOOTrainer, RLOOConfig, dict(normalize_advantages=rc.scale_rewards != "none")


TRL_TRAINERS = {"grpo": _trl_grpo, "rloo": _trl_rloo}
"""``refine.algorithm`` -> ``(trainer class, config class, its own config fields)`` for a causal small LM;
the names match :data:`lmcot.training.rl.ADV_ESTIMATORS`."""


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
