"""The training lifecycle shared by distillation and refinement, on Ray Train + DeepSpeed.

Both stages are one lifecycle, written once in :func:`run_training`:

    prepare (the stage, in the driver, no Ray)  ->  identity  ->  skip when the stage's step record
    holds it (lmcot.runs.step)  ->  check fits (lmcot.planning.resources)  ->  fit (Ray Train
    TorchTrainer; the stage's worker loop)  ->  the training log from the checkpoint's log history
    ->  export RUN/<stage>/model/  ->  summary  ->  step record

A stage supplies only what differs, as a :class:`TrainingJob`: its prepared data and
identity, its worker loop, any services it runs beside the workers (refinement's judge
actors) and the figures it adds to the summary.

Also here, for the worker loops: :func:`hf_training_args` (the ``TrainingArguments``
keywords every HF trainer shares: DeepSpeed dict, precision, device, logging, gradient
checkpointing), :func:`report_checkpoint` (a checkpoint folder and metrics to Ray Train:
used by :class:`RayReportCallback` at every HF save and by refinement's seq2seq loop),
:func:`resume_from` (the folder a restarted worker group resumes from), and
:func:`export_model` (the final checkpoint -> a ``save_pretrained`` folder that
``lmcot eval`` loads).

Checkpoint flow. The HF trainer writes ``checkpoint-N/`` (weights, tokenizer,
``trainer_state.json``, DeepSpeed's per-rank ``global_stepN/`` shards, per-rank RNG
states) into a node-local ``output_dir`` shared by the workers of a node. At each save
every rank waits for the others (a barrier), then the node's local rank 0 reports that
folder to Ray Train, which merges the folders of all nodes into
``STORAGE/NAME/checkpoint-00000N/`` and deletes the local copy. When a worker dies,
``FailureConfig(max_failures)`` restarts the group and :func:`resume_from` hands the
latest merged checkpoint to ``trainer.train(resume_from_checkpoint=...)``, which
restores weights, optimizer shards, scheduler, RNG and the data position. Rerunning
a stage with the same ``NAME`` and storage path resumes too (Ray Train keeps a
snapshot of its checkpoints there), so a killed driver loses no work either.

Failure drill: with ``LMCOT_CHAOS_EXIT_AFTER_CHECKPOINT=/path/marker`` in the
environment the last rank exits hard (``os._exit``) a few seconds after the first
checkpoint it reports, once (the marker file records that it happened). The recovery
tests use it; it is inert otherwise. Note that Ray Train learns of a reported
checkpoint when it next polls the workers (every 2 s): a worker dying within that
window costs the checkpoint's registration, and the restart resumes from the one before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import ray
import ray.train
from transformers import TrainerCallback

from lmcot.config import Config, ScalingConfig
from lmcot.training.deepspeed_config import deepspeed_config
from lmcot.planning.resources import Need, training_need, worker_resources
from lmcot.runs import step
from lmcot.runs.jsonl import write_jsonl
from lmcot.runs.rundir import RunDir, write_atomic
from lmcot.stages.cluster import ensure_ray, forwarded_env, require_resources

log = logging.getLogger(__name__)

CHAOS_ENV = "LMCOT_CHAOS_EXIT_AFTER_CHECKPOINT"
"""Environment variable of the failure drill (see the module doc)."""


# -- the lifecycle -------------------------------------------------------------------------
@dataclass
class TrainingJob:
    """What one training stage hands :func:`run_training`: everything that differs between them."""

    stage: str
    """``distill`` or ``refine``: the config section, the run-directory folder, the run's name."""
    identity: str
    """The stage identity (:func:`lmcot.config.identity` of what it reads)."""
    worker: Callable[[dict], None]
    """The Ray Train loop of one worker."""
    worker_config: Callable[[], dict]
    """Builds the workers' config in the driver once Ray runs (large data as ``ray.put`` refs)."""
    base_model: str
    """The model training starts from (recorded with the export)."""
    describe: str
    """What the run does, for the log line before it starts."""
    needs: list[Need] = field(default_factory=list)
    """Resources beyond the training workers (refinement's judge actors), checked before anything starts."""
    services: Callable[[dict], ContextManager[dict]] | None = None
    """Runs beside the workers for the whole fit: yields extra worker config (e.g. judge actor
    handles), and may fill the dict it is given with figures for the summary before it stops."""
    history: Callable[[list[dict]], list[dict]] = list
    """The lines of the training log (``RunDir.metrics``) from the checkpoint's HF log history."""
    meta: dict = field(default_factory=dict)
    """Facts recorded with the exported model (``RunDir.model_meta``) and in the summary."""
    summarize: Callable[[list[dict], dict], dict] = lambda history, metrics: {}
    """Stage figures for the summary, from the training log's lines and Ray Train's last metrics."""


def run_training(cfg: Config, run_dir: RunDir, job: TrainingJob) -> dict:
    """The lifecycle of a training stage (see the module doc); returns its summary."""
    name = f"{job.stage}-{job.identity[:12]}"
    done = step.done(run_dir.stage(job.stage), job.identity)
    if done is not None and RunDir.has_model(run_dir.model(job.stage)):
        log.info("%s: %s already holds the model of run %s; nothing to do", job.stage, run_dir.model(job.stage), name)
        return {**done, "skipped": True}

    ensure_ray()
    for need in [training_need(cfg, job.stage), *job.needs]:
        require_resources(need)
    scaling: ScalingConfig = getattr(cfg, job.stage).scaling
    log.info("%s: %s, %d workers (ZeRO-%d) -> run %s", job.stage, job.describe, scaling.num_workers,
             scaling.zero_stage, name)
    started = time.time()
    extra: dict = {}
    with (job.services(extra) if job.services else contextlib.nullcontext({})) as service_config:
        result = fit(job.worker, {**job.worker_config(), **service_config}, scaling=scaling,
                     storage_path=run_dir.checkpoints(job.stage), name=name, placement=cfg.small.placement())
    if result.checkpoint is None:
        raise RuntimeError(f"{job.stage} run {name} finished without a checkpoint; see the worker logs above")
    state = read_trainer_state(result.checkpoint)
    history = job.history(state.get("log_history", []))
    write_jsonl(run_dir.metrics(job.stage), history)
    metrics = result.metrics or {}
    meta = {"identity": job.identity, "run": name, "base_model": job.base_model, "checkpoint": result.checkpoint.path,
            "step": state.get("global_step", 0), **job.meta}
    export_model(result.checkpoint, run_dir.model(job.stage), metadata=meta)
    summary = {"model": str(run_dir.model(job.stage)), "skipped": False, **meta,
               "resumed_from_step": metrics.get("resumed_from_step", 0),
               "metrics": str(run_dir.metrics(job.stage)), **job.summarize(history, metrics), **extra,
               "wall_s": round(time.time() - started, 1)}
    step.record(run_dir.stage(job.stage), job.stage, job.identity, summary)
    return summary


# -- Ray Train plumbing ----------------------------------------------------------------------
def ray_scaling_config(scaling: ScalingConfig, placement: dict[str, float] | None = None) -> ray.train.ScalingConfig:
    """Ray Train workers of an lmcot ``ScalingConfig`` (see :func:`worker_resources`)."""
    return ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                   resources_per_worker=worker_resources(scaling, placement))


def ray_run_config(scaling: ScalingConfig, storage_path: str | os.PathLike, name: str) -> ray.train.RunConfig:
    """Storage (absolute path), failure recovery and checkpoint retention of one training run."""
    storage = Path(storage_path)
    if not storage.is_absolute():
        raise ValueError(f"checkpoint storage {storage} must be an absolute path (Ray Train needs one)")
    storage.mkdir(parents=True, exist_ok=True)
    return ray.train.RunConfig(
        name=name, storage_path=str(storage),
        failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=scaling.checkpoints_to_keep),
        # Ray Train's print patch would echo every worker line twice (logger + stdout).
        worker_runtime_env={"env_vars": {**forwarded_env(), "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
    )


def fit(train_loop: Callable[[dict], None], config: dict, *, scaling: ScalingConfig,
        storage_path: str | os.PathLike, name: str, placement: dict[str, float] | None = None) -> ray.train.Result:
    """Run ``train_loop(config)`` on every worker of a ``TorchTrainer``; returns the Ray Train result.

    ``placement``: extra Ray resources per worker (the small LM's ``ray_resource``).
    ``config`` should carry large data as object refs (``ray.put``), not inline.
    ``config["output_dir"]`` is set to the node-local folder the HF trainer writes into.
    """
    from ray.train.torch import TorchTrainer

    config = dict(config, output_dir=local_output_dir(name))
    trainer = TorchTrainer(train_loop, train_loop_config=config, scaling_config=ray_scaling_config(scaling, placement),
                           run_config=ray_run_config(scaling, storage_path, name))
    return trainer.fit()


def local_output_dir(name: str) -> str:
    """Node-local scratch folder for the HF trainer's own checkpoints (the same path on every node)."""
    return str(Path(tempfile.gettempdir()) / "lmcot-train" / name)


def hf_checkpoint_dir(path: str | os.PathLike) -> Path:
    """The folder holding ``config.json`` inside a checkpoint: the folder itself or its one sub-folder that has it."""
    path = Path(path)
    if RunDir.has_model(path):
        return path
    found = sorted(p for p in path.iterdir() if RunDir.has_model(p)) if path.is_dir() else []
    if len(found) != 1:
        raise FileNotFoundError(f"checkpoint {path} holds no single model folder (config.json); found {found}")
    return found[0]


def read_trainer_state(checkpoint: ray.train.Checkpoint) -> dict:
    """The HF ``trainer_state.json`` of a checkpoint (global step, log history), or {} if absent."""
    with checkpoint.as_directory() as d:
        path = RunDir.trainer_state(hf_checkpoint_dir(d))
        return json.loads(path.read_text()) if path.is_file() else {}


def export_model(checkpoint: ray.train.Checkpoint | str | os.PathLike, out_dir: str | os.PathLike, *,
                 tokenizer_source: str | None = None, metadata: dict | None = None) -> Path:
    """Write the model of ``checkpoint`` to ``out_dir`` as ``save_pretrained`` safetensors + tokenizer.

    The model is loaded back with the family's auto class first, so an export that succeeds
    is loadable by ``lmcot eval`` (``small.name_or_path: out_dir``). The tokenizer comes from
    the checkpoint, else from ``tokenizer_source``. ``metadata`` is written to the model's
    ``RunDir.model_meta``. The folder is replaced atomically.
    """
    from transformers import AutoTokenizer

    from lmcot.models.loading import detect_family

    out = Path(out_dir)
    ctx = checkpoint.as_directory() if isinstance(checkpoint, ray.train.Checkpoint) else contextlib.nullcontext(checkpoint)
    with ctx as d:
        src = hf_checkpoint_dir(d)
        family = detect_family(str(src))
        model = auto_model_class(family).from_pretrained(src, trust_remote_code=False)
        has_tokenizer = any((src / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        if not has_tokenizer and tokenizer_source is None:
            raise FileNotFoundError(f"checkpoint {src} has no tokenizer: pass tokenizer_source")
        tokenizer = AutoTokenizer.from_pretrained(src if has_tokenizer else tokenizer_source, trust_remote_code=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_atomic(RunDir.model_meta(tmp), json.dumps({"family": family, **(metadata or {})}, indent=2) + "\n")
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    log.info("exported %s model (%s) to %s", family, type(model).__name__, out)
    return out


def auto_model_class(family: str):
    """The transformers auto class of a model family (see :func:`lmcot.models.loading.model_class`)."""
    from lmcot.models.loading import model_class

    return model_class(family)


# -- worker side ---------------------------------------------------------------------------
def hf_training_args(scaling: ScalingConfig, *, output_dir: str, per_device_batch_size: int,
                     gradient_accumulation_steps: int, learning_rate: float, seed: int = 0,
                     group_by_length: bool = False) -> dict:
    """``TrainingArguments`` keywords every lmcot trainer shares (pass them to any subclass).

    DeepSpeed ZeRO at ``scaling.zero_stage`` (its "auto" values filled from these same
    arguments), bf16 when asked, gradient checkpointing when asked, CPU + gloo without GPUs,
    plain-text progress instead of tqdm (worker logs reach the driver), no third-party
    loggers, checkpoints by steps.
    """
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=per_device_batch_size,
        per_device_eval_batch_size=per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        deepspeed=deepspeed_config(scaling, hf_trainer=True),
        bf16=scaling.bf16,
        torch_compile=scaling.torch_compile,
        **({"gradient_checkpointing": True} if scaling.gradient_checkpointing else {}),
        use_cpu=not scaling.use_gpu,
        ddp_backend=None if scaling.use_gpu else "gloo",
        report_to="none",
        disable_tqdm=True,
        log_on_each_node=False,
        save_strategy="steps",
        save_total_limit=None,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        seed=seed,
    )


@contextlib.contextmanager
def resume_from() -> Iterator[str | None]:
    """The HF checkpoint folder of Ray Train's latest checkpoint (None on a fresh start).

    Use around the whole ``trainer.train(resume_from_checkpoint=...)`` call: with cloud
    storage the folder is a download that lives as long as the context.
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as d:
        path = str(hf_checkpoint_dir(d))
        print(f"resuming from {path}", flush=True)  # worker stdout reaches the driver
        yield path


class RayReportCallback(TrainerCallback):
    """Reports metrics and the HF checkpoint to Ray Train at every save (see the module doc).

    Metrics: the latest value of everything the HF trainer logged (``loss``,
    ``eval_loss``, ``learning_rate``, ...), ``step``, ``epoch``, ``samples_per_second``
    over the optimizer steps since the last report (save and eval time excluded) and the
    list of those figures since this worker group started (``samples_per_second_windows``),
    ``resumed_from_step`` (the step this worker group started at: 0, or the checkpoint's
    step after a restart), plus ``extra_metrics()`` when given (e.g. sampled rationales).
    """

    def __init__(self, extra_metrics: Callable[[], dict] | None = None):
        self.extra_metrics = extra_metrics
        self._seen = 0
        self._latest: dict = {}
        self._step_time = 0.0
        self._steps = 0
        self._t0: float | None = None
        self._start_step = 0
        self._windows: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self._start_step = state.global_step  # already restored when resuming

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t0 is not None:
            self._step_time += time.perf_counter() - self._t0
            self._steps += 1
            self._t0 = None

    def on_save(self, args, state, control, **kwargs):
        for entry in state.log_history[self._seen:]:
            self._latest.update(entry)
        self._seen = len(state.log_history)
        ctx = ray.train.get_context()
        global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * ctx.get_world_size()
        metrics = {k: v for k, v in self._latest.items() if isinstance(v, (int, float, str))}
        metrics.update(step=state.global_step, epoch=state.epoch or 0.0, resumed_from_step=self._start_step)
        if self._steps:
            metrics["samples_per_second"] = self._steps * global_batch / max(self._step_time, 1e-9)
            self._windows.append(round(metrics["samples_per_second"], 3))
        metrics["samples_per_second_windows"] = list(self._windows)
        self._step_time, self._steps = 0.0, 0
        if self.extra_metrics is not None:
            metrics.update(self.extra_metrics())
        report_checkpoint(RunDir.local_checkpoint(args.output_dir, state.global_step), state.global_step, metrics)


def report_checkpoint(folder: Path, step: int, metrics: dict) -> None:
    """Hand a checkpoint folder every rank has written to Ray Train, with ``metrics``.

    Waits for every rank (so all DeepSpeed shards are on disk), then the node's local rank 0
    reports the folder, which Ray Train merges into ``STORAGE/NAME/checkpoint-00000N/`` and
    deletes locally; the other ranks report the metrics alone. Then the failure drill.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    ctx = ray.train.get_context()
    checkpoint = None
    if ctx.get_local_rank() == 0 and Path(folder).is_dir():
        checkpoint = ray.train.Checkpoint.from_directory(str(folder))
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=RunDir.reported_checkpoint_name(step),
                     delete_local_checkpoint_after_upload=checkpoint is not None)
    maybe_chaos_exit(ctx)


def maybe_chaos_exit(ctx) -> None:
    """The failure drill: the last rank exits hard once, after its first reported checkpoint."""
    marker = os.environ.get(CHAOS_ENV)
    if not marker or ctx.get_world_rank() != ctx.get_world_size() - 1 or Path(marker).exists():
        return
    # Ray Train registers a reported checkpoint when its controller next polls the workers
    # (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s); die after that, as a real crash mid-run would.
    time.sleep(3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")))
    Path(marker).write_text(f"rank {ctx.get_world_rank()} exited at {time.time():.0f}\n")
    print(f"{CHAOS_ENV} set: rank {ctx.get_world_rank()} exits now to exercise recovery", flush=True)
    os._exit(1)
