"""GPU memory estimates, in bytes, for the shapes a config asks for: pure arithmetic.

Used by :mod:`lmcot.planning.plan` so a preset that cannot fit its GPUs fails in seconds, before
hours of work. The model's shape comes from its config (a local folder, a tiny model,
or the published configs of the real models shipped in ``lmcot/known_models/``);
parameters are counted exactly by building the model on the ``meta`` device.

The activation terms follow Korthikanti et al. (2022, "Reducing Activation
Recomputation"): per layer and token about ``34 h`` bytes in 16-bit outside attention,
plus the attention scores. Eager T5 attention keeps more per score than Megatron's 5
bytes (bf16 scores, the added position bias, an fp32 softmax, dropout): the coefficient
``ATTENTION_BYTES = 9`` reproduces the peaks measured on an H200 for a FLAN-T5-Large-sized
model at 1536 + 128 tokens (46.7 GB at micro-batch 4 eager; 15.7 GB at micro-batch 16 with
gradient checkpointing) to about 10 %. Estimates are for planning, and err high.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
LINEAR_BYTES = 34
"""Bytes kept per token and hidden unit in one transformer layer outside attention (16-bit)."""
ATTENTION_BYTES = 9
"""Bytes kept per attention score (per head, query and key) in one layer (eager attention)."""
RUNTIME_OVERHEAD = 1.5 * GIB
"""CUDA context, allocator fragmentation and kernels' workspace."""


@dataclass(frozen=True)
class Shape:
    """What the estimates need from a model config."""

    family: str
    params: int
    hidden: int
    heads: int
    kv_dim: int
    """Width of one token's keys (or values) in one layer: KV heads x head dim."""
    layers: int
    """Decoder layers (the causal model's layers)."""
    encoder_layers: int
    vocab: int

    @classmethod
    def from_config(cls, config, family: str) -> "Shape":
        """The shape of a transformers config; parameters counted on the meta device."""
        import torch
        from lmcot.models.loading import model_class

        with torch.device("meta"):
            params = sum(p.numel() for p in model_class(family).from_config(config).parameters())
        if family == "seq2seq":
            return cls(family, params, config.d_model, config.num_heads, config.num_heads * config.d_kv,
                       config.num_decoder_layers or config.num_layers, config.num_layers, config.vocab_size)
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(family, params, config.hidden_size, heads, kv_heads * head_dim, config.num_hidden_layers, 0,
                   config.vocab_size)


def layer_activations(tokens: int, batch: int, hidden: int, heads: int, keys: int | None = None,
                      fused: bool = False) -> int:
    """Bytes one layer keeps for backward: ``tokens`` queries attending to ``keys`` keys.
    ``fused``: attention runs on a kernel that never holds the scores (causal SDPA / flash).

    >>> layer_activations(1536, 4, 1024, 16) / 2**20  # one T5-Large encoder layer at micro-batch 4
    1500.0
    """
    keys = tokens if keys is None else keys
    scores = 0 if fused else ATTENTION_BYTES * heads * tokens * keys * batch
    return LINEAR_BYTES * tokens * batch * hidden + scores


def state_bytes(params: int, *, zero_stage: int, world: int, bf16: bool, master_weights: bool = True) -> int:
    """Weights, gradients and Adam state per worker under DeepSpeed ZeRO.

    bf16 mixed precision keeps 16-bit weights and gradients plus fp32 master weights and
    two Adam moments (12 bytes per parameter, partitioned from stage 1); fp32 keeps 4 + 4 + 8.
    ``master_weights=False`` (bf16 only): a model cast to bf16 whole, its Adam moments in bf16 too
    (2 + 2 + 4), as the H200 measurements the module doc cites ran.

    >>> state_bytes(10**9, zero_stage=2, world=4, bf16=True) / 10**9
    5.5
    >>> state_bytes(10**9, zero_stage=0, world=1, bf16=True, master_weights=False) / 10**9
    8.0
    """
    weights, grads, optim = ((2, 2, 12) if master_weights else (2, 2, 4)) if bf16 else (4, 4, 8)
    per = weights + (grads if zero_stage < 2 else grads / world) + (optim if zero_stage < 1 else optim / world)
    if zero_stage >= 3:
        per = (weights + grads + optim) / world
    return int(params * per)


def training_bytes(shape: Shape, *, batch: int, source: int, target: int, zero_stage: int, world: int,
                   bf16: bool, checkpointing: bool, master_weights: bool = True) -> int:
    """Peak bytes of one training worker: states, activations, logits and runtime overhead.

    For seq2seq, ``source`` encoder and ``target`` decoder tokens; for causal, one sequence
    of ``source + target`` tokens. With gradient checkpointing each layer keeps only its
    input, and one layer's activations live again while it is recomputed.
    """
    width = 2 if bf16 else 4
    scale = width / 2
    if shape.family == "seq2seq":
        enc = layer_activations(source, batch, shape.hidden, shape.heads)
        dec = layer_activations(target, batch, shape.hidden, shape.heads) + layer_activations(
            target, batch, shape.hidden, shape.heads, keys=source)
        per_layer = [enc] * shape.encoder_layers + [dec] * shape.layers
        inputs = (source * shape.encoder_layers + target * shape.layers) * batch * shape.hidden * width
        logits_tokens = target
    else:
        total = source + target
        per_layer = [layer_activations(total, batch, shape.hidden, shape.heads, fused=True)] * shape.layers
        inputs = total * shape.layers * batch * shape.hidden * width
        logits_tokens = total
    # checkpointing: the layer inputs, plus one layer recomputed (and part of its gradients in flight)
    activations = (inputs + 1.5 * max(per_layer)) if checkpointing else sum(per_layer)
    logits = batch * logits_tokens * shape.vocab * (width + 4)  # the logits and their fp32 softmax
    states = state_bytes(shape.params, zero_stage=zero_stage, world=world, bf16=bf16, master_weights=master_weights)
    return int(states + activations * scale + logits + RUNTIME_OVERHEAD)


def generation_bytes(shape: Shape, *, rows: int, prompt: int, new_tokens: int, width: int = 2) -> int:
    """Peak bytes of a generator: weights, the KV cache of ``rows`` sequences and the prefill.

    Seq2seq caches the encoder's keys/values in every decoder layer (cross-attention) plus its
    own; its prefill peak is one layer's attention scores (16-bit plus an fp32 softmax). Causal
    prefill runs on fused attention kernels that never hold the scores.

    >>> gib = generation_bytes(Shape("causal", 14_770_000_000, 5120, 40, 1024, 48, 0, 152064),
    ...                        rows=32, prompt=2048, new_tokens=160) / 2**30
    >>> 30 < gib < 60
    True
    """
    weights = shape.params * width
    cache = 2 * shape.layers * rows * shape.kv_dim * (prompt + new_tokens) * width
    prefill = LINEAR_BYTES * rows * prompt * shape.hidden
    if shape.family == "seq2seq":  # T5's additive position bias keeps SDPA on kernels that materialise scores
        prefill += rows * shape.heads * prompt * prompt * (width + 4)
    logits = rows * shape.vocab * 4 * 2
    return int(weights + cache + prefill + logits + RUNTIME_OVERHEAD)
