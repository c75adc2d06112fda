"""The distillation step's parts, written once: the collator, the loss and the optimizer the distill
stage hands its Hugging Face trainer, and the same step as a plain torch loop.

Why a core module: the stage (:mod:`lmcot.stages.distill`) runs the step inside Ray Train and
DeepSpeed, which a GPU lent for a few minutes does not have; ``bench/gpu_suite.py`` must still
measure *that* step (same batches, same loss, same optimizer settings, gradient checkpointing and
compile as the preset sets them). Both build their parts here, so what the suite times is what the
stage trains with; only the outer loop differs (the HF trainer's there, :class:`SFTStep` here).

Loss. Seq2seq models are called without labels and :func:`global_token_loss` sums the token
losses over the global batch's target-token count (see :mod:`lmcot.stages.distill`); causal models
keep their own loss over completion-only labels.
"""

from __future__ import annotations

import torch

from lmcot.training.sft_data import CompletionCollator

OPTIMIZER_ARGS = dict(optim="adamw_torch_fused", weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999,
                      adam_epsilon=1e-8, max_grad_norm=1.0)
"""The stage's optimizer as ``TrainingArguments`` fields (the stage passes them; :func:`sft_optimizer`
builds the same AdamW from them)."""


class DecoderInputs:
    """A collator's batch plus the seq2seq model's decoder inputs (its labels shifted right), so
    that the model is called without labels and :func:`global_token_loss` computes the loss."""

    def __init__(self, collate, model):
        self.collate, self.model = collate, model

    def __call__(self, rows):
        batch = self.collate(rows)
        labels = batch["labels"].masked_fill(batch["labels"] == -100, self.model.config.pad_token_id)
        batch["decoder_input_ids"] = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
        return batch


def global_token_loss(outputs, labels, num_items_in_batch=None):
    """Summed token cross-entropy over ``num_items_in_batch`` (the global batch's target tokens,
    counted by the HF trainer over all ranks and accumulation steps); the batch's own token
    mean when that count is not given (evaluation).

    >>> import torch
    >>> from types import SimpleNamespace
    >>> out = SimpleNamespace(logits=torch.zeros(1, 2, 4))
    >>> round(global_token_loss(out, torch.tensor([[1, -100]]), num_items_in_batch=2).item(), 4)  # ln(4) / 2
    0.6931
    """
    import torch.nn.functional as F

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten().to(logits.device), ignore_index=-100,
                            reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()
    return total / count


def sft_collator(tokenizer, model, family: str, *, use_gpu: bool):
    """The stage's collator: right padding to a multiple of 8 on GPUs (tensor-core shapes), decoder
    inputs for seq2seq models (whose loss :func:`global_token_loss` computes)."""
    collator = CompletionCollator(tokenizer.pad_token_id, pad_to_multiple_of=8 if use_gpu else 1)
    return DecoderInputs(collator, model) if family == "seq2seq" else collator


def sft_optimizer(model: torch.nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    """The AdamW of :data:`OPTIMIZER_ARGS` (fused where the weights live on a GPU, as the HF trainer's
    ``adamw_torch_fused`` is; torch's foreach kernels on CPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=OPTIMIZER_ARGS["weight_decay"],
                             betas=(OPTIMIZER_ARGS["adam_beta1"], OPTIMIZER_ARGS["adam_beta2"]),
                             eps=OPTIMIZER_ARGS["adam_epsilon"], fused=fused or None)


class SFTStep:
    """One optimizer step of distillation on a list of tokenized ``{input_ids, labels}`` rows, as the
    stage's trainer takes it without DeepSpeed: bf16 autocast over the model's own weights, gradient
    checkpointing and ``torch.compile`` when asked, the global-token loss, gradient clipping, AdamW.

    >>> from lmcot.config import ModelSpec
    >>> from lmcot.models.loading import load_model
    >>> lm = load_model(ModelSpec("tiny:t5-small", device="cpu"), for_training=True)
    >>> step = SFTStep(lm.model, lm.tokenizer, "seq2seq", learning_rate=1e-3)
    >>> rows = [{"input_ids": [5, 6, 7, 1], "labels": [8, 9, 1]}] * 2
    >>> first, second = step(rows), step(rows)
    >>> second < first
    True
    """

    def __init__(self, model, tokenizer, family: str, *, learning_rate: float, bf16: bool = False,
                 gradient_checkpointing: bool = False, compile: bool = False):
        self.model, self.family, self.bf16 = model, family, bf16
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        model.train()
        self.device = next(model.parameters()).device
        self.collate = sft_collator(tokenizer, model, family, use_gpu=self.device.type == "cuda")
        self.forward = torch.compile(model) if compile else model
        self.optimizer = sft_optimizer(model, learning_rate)

    def __call__(self, rows) -> float:
        batch = {k: v.to(self.device) for k, v in self.collate(rows).items()}
        labels = batch.pop("labels") if self.family == "seq2seq" else batch["labels"]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.forward(**batch)
            loss = global_token_loss(out, labels, (labels != -100).sum()) if self.family == "seq2seq" else out.loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), OPTIMIZER_ARGS["max_grad_norm"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()
