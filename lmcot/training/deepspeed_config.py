"""The DeepSpeed config of a training stage, as a pure function of the lmcot config.

Both training stages (distillation and refinement) hand this dict to the Hugging Face
trainers (``TrainingArguments(deepspeed=...)``) or to ``deepspeed.initialize``. Values
the HF trainer fills from its own arguments are left as ``"auto"`` so there is one
source of truth for batch size, learning rate and precision.
"""

from __future__ import annotations

from lmcot.config import ScalingConfig


def deepspeed_config(scaling: ScalingConfig, *, hf_trainer: bool = True, micro_batch: int = 1,
                     grad_accum: int = 1, lr: float = 1e-5) -> dict:
    """ZeRO config for ``scaling``; ``hf_trainer=False`` gives concrete values for ``deepspeed.initialize``.

    >>> c = deepspeed_config(ScalingConfig(zero_stage=3))
    >>> c["zero_optimization"]["stage"], c["train_micro_batch_size_per_gpu"]
    (3, 'auto')
    >>> deepspeed_config(ScalingConfig(num_workers=2), hf_trainer=False, micro_batch=4, grad_accum=2)["train_batch_size"]
    16
    """
    auto = "auto" if hf_trainer else None
    zero: dict = {"stage": scaling.zero_stage}
    if scaling.zero_stage >= 2:
        zero.update(overlap_comm=scaling.use_gpu, contiguous_gradients=True, reduce_bucket_size=5e7)
    if scaling.zero_stage == 3:
        # Gather full weights on save so save_pretrained writes a loadable model.
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    config = {
        "zero_optimization": zero,
        "gradient_clipping": auto or 1.0,
        "train_micro_batch_size_per_gpu": auto or micro_batch,
        "gradient_accumulation_steps": auto or grad_accum,
        "bf16": {"enabled": auto if scaling.bf16 else False} if hf_trainer else {"enabled": scaling.bf16},
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
    if not hf_trainer:
        config["train_batch_size"] = micro_batch * grad_accum * scaling.num_workers
        config["optimizer"] = {"type": "AdamW", "params": {"lr": lr, "weight_decay": 0.0}}
    if not scaling.use_gpu:
        # Fused CUDA Adam is unavailable on CPU; DeepSpeed then uses torch's AdamW.
        config["zero_allow_untested_optimizer"] = True
    return config
