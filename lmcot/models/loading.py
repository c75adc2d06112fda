"""Loading the small and large LMs from a hub id, a local path or a tiny local build.

One code path for all three: ``tiny:<name>`` is first built to a cache folder with
``save_pretrained`` and then loaded exactly like a hub model, so the offline tests
exercise the production loading code. Remote code is never trusted and weights are
read from safetensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lmcot.config import ModelSpec
from lmcot.runs.rundir import RunDir


class ModelLoadError(ValueError):
    """A model path or id cannot be used; the message names it and what was expected."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    family: str  # "seq2seq" | "causal"
    path: str
    device: torch.device


def tiny_cache_dir() -> Path:
    """Where ``tiny:`` models are built: ``$LMCOT_TINY_DIR`` or ``~/.cache/lmcot/tiny-models``."""
    return Path(os.environ.get("LMCOT_TINY_DIR", Path.home() / ".cache" / "lmcot" / "tiny-models"))


TINY_WORLD_DIR = Path(__file__).resolve().parents[1] / "weights" / "tiny_world"
"""The tiny world's pretrained T5s (``tools/pretrain_tiny_world.py``), shipped with the package."""


def tiny_world_path(name: str) -> Path:
    """The shipped folder of ``tiny:world-<name>`` (``large`` or ``small``)."""
    folder = TINY_WORLD_DIR / name
    if name not in ("large", "small"):
        raise ModelLoadError(f"unknown tiny world model tiny:world-{name}; choose tiny:world-large or tiny:world-small")
    if not (folder / "model.safetensors").is_file():
        raise ModelLoadError(f"tiny:world-{name}: {folder} has no model.safetensors; this install lacks the tiny "
                             "world's weights (reinstall lmcot, or rebuild them with tools/pretrain_tiny_world.py)")
    return folder


def resolve_model_path(name_or_path: str) -> str:
    """Map ``tiny:world-<name>`` to its shipped pretrained folder and ``tiny:<name>`` to its built folder
    (building it once); other values pass through."""
    if name_or_path.startswith("tiny:world-"):
        return str(tiny_world_path(name_or_path[len("tiny:world-"):]))
    if name_or_path.startswith("tiny:"):
        from lmcot.models.tiny import ensure_tiny_model

        return str(ensure_tiny_model(name_or_path[len("tiny:"):], tiny_cache_dir()))
    return name_or_path


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device={device!r} but no CUDA GPU is visible; use device: cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def detect_family(path: str, declared: str = "auto", revision: str = "") -> str:
    """``seq2seq`` or ``causal`` from the model config; fails clearly for anything else."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    local = Path(path)
    if (path.startswith((".", "/", "~")) or local.exists()) and not RunDir.has_model(local):
        raise ModelLoadError(
            f"model path {path!r} has no config.json: expected a folder written by save_pretrained "
            "(or a hub id such as google/flan-t5-large)"
        )
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False, revision=revision or None)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot read the model config of {path!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0]} "
            "(expected a hub id or a local save_pretrained folder; offline runs need a local path or tiny:<name>)"
        ) from None
    if config.model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES and getattr(config, "is_encoder_decoder", False):
        family = "seq2seq"
    elif config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        family = "causal"
    else:
        raise ModelLoadError(
            f"model {path!r} has model_type {config.model_type!r}, which is neither a seq2seq LM "
            "(T5-like) nor a causal LM; lmcot supports those two families"
        )
    if declared != "auto" and declared != family:
        raise ModelLoadError(f"model {path!r} is {family} but the config says family: {declared}")
    return family


def model_class(family: str):
    """The transformers auto class of a model family: the one owner of that choice.

    >>> model_class("seq2seq").__name__, model_class("causal").__name__
    ('AutoModelForSeq2SeqLM', 'AutoModelForCausalLM')
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if family not in ("seq2seq", "causal"):
        raise ValueError(f"family {family!r} must be seq2seq or causal")
    return AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM


def load_tokenizer(path: str, family: str, revision: str = ""):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False, revision=revision or None)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # Decoder-only models continue from the end of the prompt, so pad on the left.
    tok.padding_side = "left" if family == "causal" else "right"
    return tok


def context_tokenizer(spec: ModelSpec):
    """The tokenizer that fits contexts to ``spec``'s token budget; None for an API model
    (``backend: openai``), whose contexts are then cut by characters."""
    if spec.backend == "openai":
        return None
    path = resolve_model_path(spec.name_or_path)
    return load_tokenizer(path, detect_family(path, spec.family, spec.revision), spec.revision)


def load_model(spec: ModelSpec, *, for_training: bool = False, attn_implementation: str | None = None) -> LoadedModel:
    """Load a model and its tokenizer for generation (eval mode) or training; ``attn_implementation``
    (``sdpa``, ``eager``, ``flex_attention``) picks the attention kernel, None leaves transformers' default."""
    path = resolve_model_path(spec.name_or_path)
    family = detect_family(path, spec.family, spec.revision)
    tokenizer = load_tokenizer(path, family, spec.revision)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    cls = model_class(family)
    model = cls.from_pretrained(
        path, dtype=dtype, trust_remote_code=False, use_safetensors=True, revision=spec.revision or None,
        **({"attn_implementation": attn_implementation} if attn_implementation else {}),
    )
    check_tokenizer_matches(model, tokenizer, path)
    if not for_training:
        model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, family=family, path=path, device=device)


def check_tokenizer_matches(model, tokenizer, path: str) -> None:
    """A tokenizer with ids beyond the embedding table would crash deep in torch; fail here."""
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ModelLoadError(
            f"tokenizer of {path!r} has {len(tokenizer)} tokens but the model embeds only {vocab}: "
            "save the tokenizer the model was trained with next to it"
        )
