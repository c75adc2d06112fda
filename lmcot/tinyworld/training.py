"""Plain torch training of the tiny world's T5s: model shapes, the tokenizer, the loop, saving with a record.

No Ray and no DeepSpeed: models of a few M parameters train fastest in one process, and a fixed
thread count makes every run exact (the learning rate depends on the step alone).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path

import torch

from lmcot.tinyworld import seeds, synthetic

SIZES = {
    "large": dict(d_model=128, d_ff=256, num_layers=3, num_heads=4),
    "small": dict(d_model=96, d_ff=192, num_layers=2, num_heads=4),
}
SMOKE_SIZES = {"large": dict(d_model=32, d_ff=64, num_layers=1, num_heads=2),
               "small": dict(d_model=16, d_ff=32, num_layers=1, num_heads=2)}
TOKENIZER_WORLDS = 24
"""Worlds whose text the tokenizer learns from (none of them trained on, none the shipped one)."""


def world_tokenizer(seed: int, train_worlds: int):
    """:func:`lmcot.models.tiny.build_tokenizer`'s tokenizer (same code, FLAN-T5's conventions: ``</s>``
    appended, pad 0 / eos 1 / unk 2, ``model_max_length`` 512), learned from world-neutral text.

    ``build_tokenizer`` learns its merges from the shipped files, so every name of the shipped
    dev world becomes one or two tokens of its own (``Dorvelford``): tokens that no other world
    contains, whose output rows a model trained on other worlds never learns (43 % of the dev
    answers' tokens occur < 5 times in three training worlds). Learned instead from the prompt
    templates and the text of many small worlds, names split into syllable pieces shared by
    every world, the shipped one included.
    """
    from lmcot.models import tiny

    corpus = tiny.template_texts()
    for s in seeds.pretraining_seeds(seed, train_worlds + TOKENIZER_WORLDS)[train_worlds:]:
        corpus += list(synthetic.generate(seed=s, train=40, dev=0).values())
    return tiny.build_tokenizer("seq2seq", corpus)


def build_t5(size: dict, tokenizer, seed: int):
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer), d_kv=size["d_model"] // size["num_heads"], feed_forward_proj="gated-gelu",
        num_decoder_layers=size["num_layers"], tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id, dropout_rate=0.0, **size,
    )
    # Tied input and output embeddings (T5 v1.0's choice; FLAN-T5 unties them): a name of an unseen
    # world is made of pieces rare in the training worlds, whose untied output rows stay untrained,
    # so an untied model cannot write them even when it attends to them. Tied, copying a token is
    # reproducing its embedding, trained or not. Untied runs never copied a name.
    model = T5ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, suppress_tokens=[tokenizer.pad_token_id],
    )
    return model


def batches(rng: random.Random, data: list, batch_size: int):
    """Endless length-grouped batches: shuffle, sort within windows of 50 batches, shuffle the batches."""
    while True:
        idx = list(range(len(data)))
        rng.shuffle(idx)
        window = batch_size * 50
        out = []
        for w in range(0, len(idx), window):
            chunk = sorted(idx[w:w + window], key=lambda i: len(data[i][0]))
            out += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
        rng.shuffle(out)
        yield from out


def collate(data: list, batch: list[int], pad_id: int) -> dict:
    src = [data[i][0] for i in batch]
    tgt = [data[i][1] for i in batch]
    ls, lt = max(map(len, src)), max(map(len, tgt))
    ids = torch.tensor([s + [pad_id] * (ls - len(s)) for s in src])
    labels = torch.tensor([t + [-100] * (lt - len(t)) for t in tgt])
    return dict(input_ids=ids, attention_mask=(ids != pad_id).long(), labels=labels)


def lr_at(step: int, lr: float, warmup: int) -> float:
    """Linear warmup, then inverse-square-root decay (T5's schedule): it depends on the step alone,
    so a run cut by the time budget is reproduced exactly by asking for the steps it took.

    >>> [round(lr_at(s, 1.0, 100), 3) for s in (0, 49, 99, 399, 9999)]
    [0.01, 0.5, 1.0, 0.5, 0.1]
    """
    return lr * min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))


def train(model, data: list, *, steps: int, seconds: float, lr: float, batch_size: int, seed: int, pad_id: int,
          log_every: int, name: str, warmup: int = 100, checkpoint=None, checkpoint_every: int = 0,
          first_step: int = 0) -> dict:
    """AdamW for ``steps`` steps, or fewer when ``seconds`` > 0 runs out (the steps taken are recorded).

    ``checkpoint(step)`` is called every ``checkpoint_every`` steps, so a long run can be
    evaluated (and used) before it ends. ``first_step`` continues a run that already took that many
    steps with these arguments: its batches are skipped and the schedule goes on from there, so the
    continuation sees the data a longer run would (only AdamW's moments and the dropout draws start
    afresh)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    losses, stream, step, start = [], batches(rng, data, batch_size), 0, time.monotonic()
    for _ in range(first_step):
        next(stream)
    model.train()
    while step < steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(first_step + step, lr, warmup)
        loss = model(**collate(data, next(stream), pad_id)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        elapsed = time.monotonic() - start
        out_of_time = seconds > 0 and elapsed >= seconds
        if step % log_every == 0 or step == steps or out_of_time:
            recent = losses[-log_every:]
            print(f"[{name}] step {step}/{steps} loss {sum(recent) / len(recent):.3f} "
                  f"lr {lr_at(first_step + step - 1, lr, warmup):.2e} "
                  f"{elapsed:.0f}s", flush=True)
        if out_of_time:
            break
        if checkpoint is not None and checkpoint_every and step % checkpoint_every == 0:
            model.eval()
            checkpoint(step)
            model.train()
    model.eval()
    tail = losses[-max(1, min(50, len(losses) // 5)):]
    return {"steps": step, "max_steps": steps, "seconds": round(time.monotonic() - start, 1), "warmup": warmup,
            "first_loss": round(losses[0], 4), "final_loss": round(sum(tail) / len(tail), 4),
            "stopped_by_time": step < steps}


def load_t5(folder: Path):
    from transformers import T5ForConditionalGeneration

    return T5ForConditionalGeneration.from_pretrained(folder)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(model, tokenizer, out: Path, record: dict) -> dict:
    """Write the model, its tokenizer and its record (with the weights' sha256) to ``out``.

    The tokenizer is saved without the truncation the last call to it set (the training targets' cap),
    so a saved folder tokenizes as the tokenizer it was built from."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_truncation()
    tokenizer.save_pretrained(out)
    record = dict(record, parameters=sum(p.numel() for p in model.parameters()),
                  sha256={"model.safetensors": sha256(out / "model.safetensors")})
    (out / "lmcot_tiny_world.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
