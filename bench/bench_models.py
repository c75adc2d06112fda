"""Random T5 models for the benchmarks: larger than the test models, so that the work being
measured (generation, training steps), not process start-up, dominates the wall time.

They use the tiny models' tokenizer and are written with ``save_pretrained`` under
``artifacts/bench-models/`` once, then loaded by path like any hub model.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def random_t5(d_model: int, layers: int, min_new_tokens: int = 0) -> Path:
    """A random T5 (``d_ff = 4 x d_model``, 8 heads); ``min_new_tokens`` > 0 makes every
    generation decode at least that many tokens, so every row costs the same."""
    from transformers import GenerationConfig

    from lmcot.models import tiny

    name = f"t5-bench-d{d_model}-l{layers}"
    out = ROOT / "artifacts" / "bench-models" / f"{name}-new{min_new_tokens}-{tiny.fingerprint()}"
    if not (out / "lmcot_tiny.json").is_file():
        tiny.TINY_MODELS[name] = ("seq2seq", dict(d_model=d_model, d_ff=4 * d_model, num_layers=layers, num_heads=8))
        tiny.write_tiny_model(name, out)
        if min_new_tokens:
            gen = GenerationConfig.from_pretrained(out)
            gen.min_new_tokens = min_new_tokens
            gen.save_pretrained(out)
    return out


def parameter_count(model_dir: Path) -> int:
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(Path(model_dir) / "model.safetensors").values())


# -- models sized like the real ones, and the card's limits (bench/gpu_suite.py) --------------------------
SMOKE_SEQ2SEQ = dict(d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=4)
SMOKE_CAUSAL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2)
"""``--smoke``: the real configs shrunk to CPU size (same families, vocabularies and conventions)."""
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


def card_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def peak_flops() -> float:
    """Dense bf16 peak of the card (the H100's when the name is unknown)."""
    return next((v for k, v in PEAK_BF16.items() if k in card_name()), 989e12)


def hbm_bandwidth() -> float:
    return next((v for k, v in HBM_BYTES_PER_S.items() if k in card_name()), 3.35e12)


def known_config(name: str, smoke: bool = False):
    """(transformers config, family) of a published config shipped in ``lmcot/known_models`` (no hub)."""
    from transformers import AutoConfig

    from lmcot.planning.plan import known_model

    fields = dict(known_model(name)["config"])
    family = "seq2seq" if fields.get("is_encoder_decoder") else "causal"
    if smoke:
        fields.update(SMOKE_SEQ2SEQ if family == "seq2seq" else SMOKE_CAUSAL)
    return AutoConfig.for_model(fields.pop("model_type"), **fields), family


def known_model(name: str, smoke: bool = False, dtype=None):
    """A random-init model of a published config, with lmcot's tiny tokenizer of the same family (its
    2,048 ids fit the real vocabularies), as a :class:`lmcot.models.loading.LoadedModel` on the card
    (bf16) or, for ``smoke``, on the CPU (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from lmcot.models.loading import LoadedModel, load_tokenizer, resolve_model_path

    config, family = known_config(name, smoke)
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    cls = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
    with torch.device(device):
        model = cls.from_config(config, dtype=dtype).eval()
    tokenizer = load_tokenizer(resolve_model_path("tiny:t5-large" if family == "seq2seq" else "tiny:causal-large"),
                               family)
    return LoadedModel(model=model, tokenizer=tokenizer, family=family, path=name, device=device)


def param_counts(model) -> dict:
    """Parameters read per decoding step and run per prefill token (embedding lookups excluded)."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    if model.config.is_encoder_decoder:
        enc = sum(p.numel() for p in model.encoder.parameters()) - embed
        dec = sum(p.numel() for p in model.decoder.parameters()) - embed + model.lm_head.weight.numel()
        return {"total": total, "prefill": enc, "decode": dec}
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return {"total": total, "prefill": total - (0 if tied else embed), "decode": total - (0 if tied else embed)}


def attn_width(config) -> tuple[int, int]:
    """(layers, heads x head_dim) of the prefill's self-attention."""
    if config.is_encoder_decoder:
        return config.num_layers, config.num_heads * config.d_kv
    head = config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, config.num_attention_heads * head


def prefill_flops(model, rows: int, prompt: int) -> float:
    """2 x params x tokens + attention (QK^T and AV: 4 x prompt^2 x width per layer) for ``rows`` prompts."""
    layers, width = attn_width(model.config)
    return rows * (2.0 * param_counts(model)["prefill"] * prompt + 4.0 * layers * prompt * prompt * width)


def decode_floor_s(model, rows: int, prompt: int, new: int) -> float:
    """The card's limit for ``new`` decoding steps: read the decoder weights and the KV caches once per
    step at HBM bandwidth (bf16), plus the prefill at peak bf16."""
    cfg = model.config
    if cfg.is_encoder_decoder:  # cross-attention cache (prompt) + self-attention cache (~new/2 on average)
        kv = rows * cfg.num_decoder_layers * 2 * cfg.num_heads * cfg.d_kv * (prompt + new / 2)
    else:
        head = cfg.hidden_size // cfg.num_attention_heads
        kv = rows * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head * (prompt + new / 2)
    per_step = 2.0 * (param_counts(model)["decode"] + kv) / hbm_bandwidth()
    return new * per_step + prefill_flops(model, rows, prompt) / peak_flops()


def seq2seq_train_flops(model, rows: int, source: int, target: int) -> float:
    """FLOPs of one training step (forward + backward = 3 forwards; a checkpointed layer's recompute is not
    counted, as MFU does not): 6 x params x tokens plus three times the attention's forward."""
    cfg, counts = model.config, param_counts(model)
    width = cfg.num_heads * cfg.d_kv
    attention = 4.0 * width * (cfg.num_layers * source * source
                               + cfg.num_decoder_layers * (target * target + target * source))
    return rows * (6.0 * (counts["prefill"] * source + counts["decode"] * target) + 3.0 * attention)
