"""Tiny offline models: random-weight T5 and causal LMs with a locally trained tokenizer.

No weights can be downloaded in tests or on an offline laptop, so lmcot builds its
own: a byte-level BPE tokenizer trained on the shipped synthetic data and prompt
templates, and small configs initialised from a fixed seed. They are saved with
``save_pretrained`` and loaded back through :func:`lmcot.models.loading.load_model`, the same
code that loads hub models. They carry the real models' conventions, so the limits and
formats tests see are those of production: the T5s FLAN-T5's (``model_max_length`` 512,
``</s>`` appended, pad = decoder start, right padding), the causal ones Qwen2.5-Instruct's
(chat template, ``<|im_end|>`` as eos, ``<|endoftext|>`` as pad, 32,768 positions). A random T5 only ever emits ``<pad>``, so the saved
generation config suppresses it; the model then writes (random) text that flows
through the whole pipeline, and training teaches it real rationales.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch

from lmcot.prompting import prompts

VOCAB_SIZE = 2048

# name -> (family, size parameters). "small" plays the student, "large" the frozen LM.
TINY_MODELS = {
    "t5-small": ("seq2seq", dict(d_model=64, d_ff=128, num_layers=2, num_heads=4)),
    "t5-large": ("seq2seq", dict(d_model=96, d_ff=192, num_layers=3, num_heads=4)),
    "causal-small": ("causal", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)),
    "causal-large": ("causal", dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4)),
}

# Special tokens in the real models' order: FLAN-T5 has <pad>=0, </s>=1, <unk>=2; Qwen2.5 has
# <|endoftext|> (its pad), <|im_start|> and <|im_end|> (the chat turn end, its eos).
_SPECIALS = {"seq2seq": ["<pad>", "</s>", "<unk>"], "causal": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]}

T5_MAX_LENGTH = 512
"""FLAN-T5's tokenizers declare ``model_max_length: 512``; the tiny T5s do too, so tests see the limit."""

QWEN_MAX_LENGTH, QWEN_POSITIONS = 131072, 32768
"""Qwen2.5's tokenizer declares 131,072 tokens; its config 32,768 positions."""

QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""Qwen2.5-Instruct's chat layout (system turn by default, ``<|im_start|>role ... <|im_end|>``)."""


def template_texts() -> list[str]:
    """Every prompt template and judge aspect's wording: text any lmcot tokenizer should know."""
    texts = [getattr(prompts, name) for name in ("STANDARD", "COT", "TEACHER_RATIONALE", "SMALL_RATIONALE",
                                                  "ANSWER_FROM_RATIONALE", "JUDGE")]
    return texts + [f"{a.definition} {a.question} yes no Yes No" for a in prompts.ASPECTS.values()]


def _corpus() -> list[str]:
    """Text the tokenizer learns from: the shipped data files and every prompt template."""
    texts = template_texts()
    data_dir = resources.files("lmcot") / "data"
    for entry in sorted(data_dir.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            texts.append(entry.read_text())
    return texts


def build_tokenizer(family: str, corpus: list[str] | None = None):
    """Train a deterministic byte-level BPE tokenizer and wrap it for transformers, on ``corpus`` (default:
    the shipped data files and the prompt templates)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    specials = _SPECIALS[family]
    tok = Tokenizer(models.BPE(unk_token="<unk>" if family == "seq2seq" else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus() if corpus is None else corpus, trainer=trainer)
    if family == "seq2seq":
        # T5 appends </s> to every encoded sequence.
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
            model_max_length=T5_MAX_LENGTH, padding_side="right",
        )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], model_max_length=QWEN_MAX_LENGTH,
        padding_side="right",  # as Qwen ships it; lmcot pads causal prompts on the left to generate
    )
    wrapped.chat_template = QWEN_CHAT_TEMPLATE
    return wrapped


def build_model(name: str, tokenizer, seed: int = 0):
    """A random-initialised model of one of :data:`TINY_MODELS`, matched to ``tokenizer``."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, T5Config, T5ForConditionalGeneration

    family, size = TINY_MODELS[name]
    torch.manual_seed(seed)
    vocab = len(tokenizer)
    if family == "seq2seq":
        config = T5Config(
            vocab_size=vocab, d_kv=size["d_model"] // size["num_heads"], feed_forward_proj="gated-gelu",
            num_decoder_layers=size["num_layers"], tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id, **size,
        )
        model = T5ForConditionalGeneration(config)
        generation = GenerationConfig(
            decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, suppress_tokens=[tokenizer.pad_token_id],
        )
    else:
        # Qwen2.5-Instruct: bos = eos = <|endoftext|> in the config; generation stops at
        # <|im_end|> or <|endoftext|> and pads with <|endoftext|>. Untied embeddings (as Qwen2.5-14B):
        # a random model with tied ones only repeats the prompt's last token (the template's newline).
        endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        config = Qwen2Config(
            vocab_size=vocab, num_key_value_heads=max(1, size["num_attention_heads"] // 2),
            max_position_embeddings=QWEN_POSITIONS, tie_word_embeddings=False, bos_token_id=endoftext,
            eos_token_id=endoftext, pad_token_id=None, **size,
        )
        model = Qwen2ForCausalLM(config)
        # A random model emits special tokens as readily as words; suppress the ones that are not
        # an end of turn (and an immediate end), so it writes text as the tiny T5s do.
        generation = GenerationConfig(
            bos_token_id=endoftext, eos_token_id=[tokenizer.eos_token_id, endoftext], pad_token_id=endoftext,
            suppress_tokens=[endoftext, tokenizer.convert_tokens_to_ids("<|im_start|>")],
            begin_suppress_tokens=[tokenizer.eos_token_id],
        )
    model.generation_config = generation
    return model


def write_tiny_model(name: str, out_dir: Path, seed: int = 0) -> Path:
    """Build and ``save_pretrained`` one tiny model (with tokenizer) into ``out_dir``."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {', '.join(TINY_MODELS)}")
    family = TINY_MODELS[name][0]
    tokenizer = build_tokenizer(family)
    model = build_model(name, tokenizer, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "lmcot_tiny.json").write_text(json.dumps({"name": name, "family": family, "seed": seed}) + "\n")
    return out_dir


def fingerprint() -> str:
    """Changes whenever the tokenizer corpus or this build code changes, so stale builds are not reused."""
    digest = hashlib.sha256(json.dumps([_corpus(), Path(__file__).read_text()], sort_keys=True).encode())
    return digest.hexdigest()[:12]


def ensure_tiny_model(name: str, cache_dir: Path, versioned: bool = True) -> Path:
    """Return the built folder of ``tiny:<name>``, building it once (safe across processes)."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model tiny:{name}; choose one of {', '.join('tiny:' + n for n in TINY_MODELS)}")
    target = Path(cache_dir) / (f"{name}-{fingerprint()}" if versioned else name)
    if (target / "lmcot_tiny.json").is_file():
        return target
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per machine; the others wait and reuse
        if not (target / "lmcot_tiny.json").is_file():
            tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{name}."))
            write_tiny_model(name, tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    return target


def make_tiny_models(out_dir: str | Path, versioned: bool = False) -> dict[str, Path]:
    """Build every tiny model under ``out_dir`` (the ``lmcot make-tiny-models`` command)."""
    return {name: ensure_tiny_model(name, Path(out_dir), versioned=versioned) for name in TINY_MODELS}
