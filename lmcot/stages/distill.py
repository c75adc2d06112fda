"""Rationale distillation: fine-tune the small LM on the teacher's kept rationales.

``lmcot distill`` / ``jobs/distill.py`` reads the kept rows of ``RUN/rationales/``,
builds (small-LM rationale prompt -> rationale) pairs (:mod:`lmcot.training.sft_data`) and
trains the small LM on them with a Ray Train ``TorchTrainer``: every worker runs a
Hugging Face trainer with DeepSpeed ZeRO (``distill.scaling.zero_stage``, default 2).
Checkpoints go to ``RUN/distill/checkpoints/`` every ``distill.save_steps`` steps; a
dead worker is replaced and training resumes from the last one
(:mod:`lmcot.stages.train_common`). The final model is exported to
``RUN/distill/model/`` (safetensors + tokenizer + generation config), the folder
``lmcot eval --set small.name_or_path=RUN/distill/model`` uses as the small LM.

One training path for both model families. Seq2seq models (T5) use transformers'
``Seq2SeqTrainer``; causal models use the plain ``Trainer`` on the same data with the
prompt tokens' labels set to -100, which is exactly completion-only loss (what TRL's
``SFTTrainer(completion_only_loss=True)`` computes from its completion mask). TRL is
not used here because its ``SFTTrainer`` fails on encoder-decoder models; a single
path keeps one collator, one set of arguments and one checkpoint format for both,
and the labels are unit-tested in :mod:`lmcot.training.sft_data`.

Everything that can be wrong with the input is checked in the driver before any
worker starts: no kept rationales, a missing model, a tokenizer that does not match
the model, more workers than the cluster holds. At each evaluation the validation
loss is logged together with the greedy rationales of a few validation prompts; the
training loss is printed every ``distill.logging_steps`` steps.

The run's identity (:func:`lmcot.config.identity`) covers the pairs' content, the small
LM, the distill section and the seed, minus run-only fields (resources, retries,
gradient checkpointing): rerunning with the same inputs resumes the same Ray Train run
(or returns at once when its model is already exported); changing any of them starts a
new run. The lifecycle itself is :func:`lmcot.stages.train_common.run_training`.

Loss. Every worker's loss is the sum of its token losses divided by the number of target
tokens of the whole global batch (over all ranks and accumulation steps), which the HF
trainer counts; the gradients the ranks average then equal the gradient of one worker on
the whole batch, whatever the number of workers (a test checks 1 vs 2 workers).
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from lmcot.config import Config, identity, to_dict
from lmcot.runs.rundir import RunDir
from lmcot.training.sft_step import OPTIMIZER_ARGS, DecoderInputs, global_token_loss, sft_collator  # noqa: F401

log = logging.getLogger(__name__)


def prepare(cfg: Config, run_dir: RunDir) -> dict:
    """Everything the workers need, built and checked in the driver (no Ray, no worker started).

    Returns ``{model_path, family, tokenizer, train, val, samples, pairs, identity}``
    where ``train``/``val`` are :class:`lmcot.training.sft_data.TokenizedPairs`.
    """
    import numpy as np
    from transformers import AutoConfig

    from lmcot.datasets.data import load_split
    from lmcot.prompting.fitting import PromptFitter
    from lmcot.prompting.roles import ROLES
    from lmcot.models.loading import context_tokenizer, detect_family, load_tokenizer, resolve_model_path
    from lmcot.training.sft_data import (build_pairs, check_tokenizer_vocab, encode_pairs, pairs_fingerprint,
                                read_kept_rows, rebuild_contexts, rows_needing_context, sample_prompts, split_pairs)

    dc, spec = cfg.distill, cfg.small
    rows = read_kept_rows(run_dir.rationales)
    if spec.backend == "openai":
        raise ValueError("small.backend=openai: the small LM is trained here, so it must be a local or hub "
                         "model (small.backend: hf)")
    path = resolve_model_path(spec.name_or_path)
    family = detect_family(path, spec.family, spec.revision)
    tokenizer = load_tokenizer(path, family, spec.revision)
    model_config = AutoConfig.from_pretrained(path, revision=spec.revision or None)
    check_tokenizer_vocab(tokenizer, model_config.vocab_size, path)

    contexts = {}
    missing = rows_needing_context(rows)
    if missing:
        examples = {(ds.name, ex.id): ex for ds in cfg.data.datasets for ex in load_split(ds, "train")}
        contexts = rebuild_contexts(missing, examples, mode=cfg.data.context_mode,
                                    tokenizer=context_tokenizer(cfg.large), max_tokens=cfg.data.context_max_tokens)
    pairs = build_pairs(rows, contexts, limit=dc.limit)
    train_pairs, val_pairs = split_pairs(pairs, dc.eval_fraction, cfg.seed)
    # The small LM's own fitter: training prompts are exactly those it is later served.
    fitter = PromptFitter.for_model(spec, tokenizer, family, model_config, field="small.max_input_tokens")
    encode = dict(family=family, max_source_tokens=dc.max_source_tokens, max_target_tokens=dc.max_target_tokens,
                  chat_template=spec.chat_template, fitter=fitter, reserve=ROLES["small"].reserve(cfg.generation))
    train = encode_pairs(tokenizer, train_pairs, **encode)
    val = encode_pairs(tokenizer, val_pairs, **encode) if val_pairs else None
    longest = int(np.diff(train.source_offsets).max()) if len(train) else 0
    if longest > dc.max_source_tokens:
        raise ValueError(f"distill.max_source_tokens={dc.max_source_tokens} is below the longest small-LM prompt "
                         f"({longest} tokens, as served): raise it to {longest} or lower small.max_input_tokens "
                         "(`lmcot plan` checks this)")
    if train.truncated_sources:
        log.info("distill: %d of %d prompts have their context shortened to the small LM's limit of %d tokens, "
                 "as at inference", train.truncated_sources, len(train), fitter.limit)
    if train.truncated_targets:
        log.warning("distill: %d of %d rationales are cut to distill.max_target_tokens=%d",
                    train.truncated_targets, len(train), dc.max_target_tokens)
    samples = sample_prompts(tokenizer, val_pairs or train_pairs, dc.sample_rationales, family, spec.chat_template)
    inputs = cfg.sections("seed", "small", "distill") | {"pairs": pairs_fingerprint(pairs)}
    return dict(model_path=path, family=family, tokenizer=tokenizer, train=train, val=val, samples=samples,
                pairs=len(pairs), train_pairs=len(train_pairs), val_pairs=len(val_pairs), identity=identity(inputs),
                truncated_prompts=train.truncated_sources)


def run(cfg: Config, run_dir: RunDir) -> dict:
    """Distill the small LM on kept rationales; returns a summary (model folder, losses, throughput)."""
    from lmcot.stages.train_common import TrainingJob, run_training

    prep = prepare(cfg, run_dir)

    def worker_config() -> dict:
        import ray

        return {"data": ray.put({"train": prep["train"], "val": prep["val"], "samples": prep["samples"]}),
                "model": cfg.small.name_or_path, "revision": cfg.small.revision, "family": prep["family"],
                "distill": to_dict(cfg.distill), "seed": cfg.seed}

    return run_training(cfg, run_dir, TrainingJob(
        stage="distill", identity=prep["identity"], worker=train_worker, worker_config=worker_config,
        base_model=cfg.small.name_or_path,
        describe=f"{prep['pairs']} pairs ({prep['train_pairs']} train, {prep['val_pairs']} validation), "
                 f"{prep['family']} model {prep['model_path']}",
        meta={"train_pairs": prep["train_pairs"], "val_pairs": prep["val_pairs"],
              "truncated_prompts": prep["truncated_prompts"]},
        summarize=summarize))


def summarize(history: list[dict], metrics: dict) -> dict:
    """Losses from the trainer's log; throughput and sampled rationales from Ray Train's last report."""
    losses = [e["loss"] for e in history if "loss" in e]
    evals = [e["eval_loss"] for e in history if "eval_loss" in e]
    return {"first_loss": losses[0] if losses else None, "train_loss": losses[-1] if losses else None,
            "eval_loss": evals[-1] if evals else None, "samples_per_second": metrics.get("samples_per_second"),
            "samples_per_second_windows": metrics.get("samples_per_second_windows", []),
            "samples": metrics.get("samples", [])}


# -- inside each Ray Train worker ----------------------------------------------------------
def train_worker(config: dict) -> None:
    """The Ray Train loop of one worker: build the HF trainer, resume if Ray hands a checkpoint, train."""
    import ray
    import torch

    from lmcot.config.distill import DistillConfig
    from lmcot.config.loader import build
    from lmcot.stages.train_common import RayReportCallback, resume_from

    dc = build(DistillConfig, config["distill"])
    data = ray.get(config["data"])
    trainer, sampler = build_trainer(config, dc, data, zero=True)
    trainer.add_callback(RayReportCallback(extra_metrics=lambda: {"samples": sampler.latest}))
    torch.manual_seed(config["seed"])
    with resume_from() as checkpoint:
        trainer.train(resume_from_checkpoint=checkpoint)


def build_trainer(config: dict, dc, data: dict, *, zero: bool = True):
    """The HF trainer of one worker (``zero=False``: no DeepSpeed, the single-process baseline of the bench)."""
    import dataclasses

    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer

    from lmcot.models.loading import load_tokenizer, resolve_model_path
    from lmcot.stages.train_common import auto_model_class, hf_training_args

    family = config["family"]
    path = resolve_model_path(config["model"])
    tokenizer = load_tokenizer(path, family, config.get("revision", ""))
    scaling = dc.scaling if zero else dataclasses.replace(dc.scaling, zero_stage=0)
    common = hf_training_args(scaling, output_dir=config["output_dir"], per_device_batch_size=dc.per_device_batch_size,
                              gradient_accumulation_steps=dc.gradient_accumulation_steps,
                              learning_rate=dc.learning_rate, seed=config["seed"],
                              group_by_length=dc.group_by_length)
    if not zero:
        common.pop("deepspeed")
        common["ddp_backend"] = None
    has_val = data.get("val") is not None and len(data["val"]) > 0
    args = Seq2SeqTrainingArguments(
        **common, num_train_epochs=dc.epochs, max_steps=dc.max_steps or -1, warmup_steps=dc.warmup_steps,
        save_steps=dc.save_steps, logging_steps=dc.logging_steps,
        eval_strategy="steps" if has_val else "no", eval_steps=dc.eval_steps,
        remove_unused_columns=False, label_names=["labels"], prediction_loss_only=True, **OPTIMIZER_ARGS,
    )
    # After the arguments: with ZeRO-3 in them, from_pretrained partitions the weights as it loads.
    model = auto_model_class(family).from_pretrained(path, revision=config.get("revision") or None,
                                                     use_safetensors=True)
    sampler = RationaleSampler(tokenizer, data.get("samples", []), family=family,
                               max_new_tokens=dc.max_target_tokens, synced=dc.scaling.zero_stage == 3 and zero)
    trainer_cls = Seq2SeqTrainer if family == "seq2seq" else Trainer
    # The collator, loss and optimizer settings come from lmcot.training.sft_step, which bench/gpu_suite.py
    # times without Ray or DeepSpeed. T5 averages its loss over its own batch's tokens; computed there
    # instead, over the tokens of the global batch (see the module doc), so that 1 or N workers take the same step.
    collator = sft_collator(tokenizer, model, family, use_gpu=dc.scaling.use_gpu)
    seq2seq = {"compute_loss_func": global_token_loss} if family == "seq2seq" else {}
    trainer = trainer_cls(
        model=model, args=args, train_dataset=data["train"], eval_dataset=data["val"] if has_val else None,
        data_collator=collator, processing_class=tokenizer, callbacks=[sampler], **seq2seq,
    )
    if family == "seq2seq":
        trainer.model_accepts_loss_kwargs = False  # the loss above gets the token count, T5's forward need not
    return trainer, sampler


class RationaleSampler(TrainerCallback):
    """At each evaluation, greedy rationales for a few validation prompts, logged next to the reference.

    Every rank generates (ZeRO-3 needs all ranks in each forward: ``synced_gpus``); rank 0 logs.
    ``latest`` holds the last samples for the metrics reported to Ray Train.
    """

    def __init__(self, tokenizer, samples: list[dict], *, family: str, max_new_tokens: int, synced: bool = False):
        self.tokenizer, self.samples, self.family = tokenizer, samples, family
        self.max_new_tokens, self.synced = max_new_tokens, synced
        self.latest: list[dict] = []

    def generate(self, model) -> list[str]:
        import torch

        if not self.samples:
            return []
        enc = self.tokenizer([s["prompt"] for s in self.samples], return_tensors="pt", padding=True)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                 pad_token_id=self.tokenizer.pad_token_id, synced_gpus=self.synced)
        if was_training:
            model.train()
        out = out[:, enc["input_ids"].shape[1]:] if self.family == "causal" else out[:, 1:]
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if not self.samples or model is None:
            return
        texts = self.generate(model)
        self.latest = [{"id": s["id"], "generated": t, "reference": s["reference"]} for s, t in zip(self.samples, texts)]
        if state.is_world_process_zero:
            loss = (metrics or {}).get("eval_loss")
            lines = [f"distill step {state.global_step}: eval_loss={loss if loss is None else round(loss, 4)}"]
            lines += [f"  [{s['id']}] generated: {s['generated']!r}\n  [{s['id']}] reference: {s['reference']!r}"
                      for s in self.latest]
            print("\n".join(lines), flush=True)
