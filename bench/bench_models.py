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
