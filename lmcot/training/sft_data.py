"""Supervised pairs for rationale distillation: (small-LM rationale prompt -> teacher rationale).

The distillation stage reads the kept rows of ``RUN/rationales/`` and turns each into
one training pair. The prompt is exactly what the small LM sees at inference
(the ``small`` role of :data:`lmcot.prompting.roles.ROLES`, wrapped in the chat template when a
causal model has one, tokenised the way :class:`lmcot.models.generation.HFGenerator` does),
so the model is trained on the distribution it is later asked to continue.

Contexts come from the rows' ``context`` column (the teacher's fitted context, which
``lmcot generate-rationales`` writes); rows without one get theirs rebuilt from the
dataset (:func:`lmcot.datasets.data.load_split` + :func:`lmcot.datasets.context.build_context`) keyed
by (dataset, id).

Labels:

- seq2seq (T5): ``input_ids`` = prompt, ``labels`` = rationale + ``</s>``; the model
  shifts the labels right itself to build the decoder inputs.
- causal: ``input_ids`` = prompt + rationale + eos and ``labels`` = the same with the
  prompt positions set to -100. That is completion-only loss, what TRL's
  ``SFTTrainer(completion_only_loss=True)`` computes, in a form the plain HF trainers
  accept for both families.

Tokenised pairs are stored as ragged int32 numpy arrays (:class:`TokenizedPairs`): one
tokenisation in the driver, shipped once through Ray's object store and read without
a copy by every worker on a node. The validation split is by question, so several
sampled rationales of one question never straddle train and validation.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from lmcot.prompting.fitting import PromptFitter
from lmcot.prompting.roles import ROLES

IGNORE_INDEX = -100
"""Label value the HF losses skip (prompt and padding positions)."""

RATIONALE_COLUMNS = ("dataset", "id", "sample", "question", "context", "rationale", "kept")
"""Columns read from the rationale shards (``dataset``, ``sample`` and ``context`` are optional)."""
REQUIRED_COLUMNS = ("id", "question", "rationale", "kept")


class NoRationalesError(ValueError):
    """There is nothing to distill: no shards, or no kept rationale in them."""


@dataclass(frozen=True)
class SFTPair:
    """One training example: the small LM's prompt (untokenised, unformatted) and the rationale to learn."""

    dataset: str
    id: str
    sample: int
    prompt: str
    target: str


# -- reading the rationale shards ----------------------------------------------------------
def read_kept_rows(root: Path) -> list[dict]:
    """The kept rows of every shard under ``root``; raises :class:`NoRationalesError` when there are none."""
    from lmcot.runs.shards import ShardError, read_shards, shard_paths

    root = Path(root)
    if not shard_paths(root):
        raise NoRationalesError(
            f"no rationale shards in {root}: run `lmcot generate-rationales --run-dir {root.parent}` "
            "(or jobs/generate_rationales.py) before distilling"
        )
    try:
        table = read_shards(root, RATIONALE_COLUMNS, required=REQUIRED_COLUMNS)
    except ShardError as exc:
        raise NoRationalesError(str(exc)) from None
    rows = [r for r in table.to_pylist() if r["kept"] and (r.get("rationale") or "").strip()]
    if not rows:
        raise NoRationalesError(
            f"{root} holds {table.num_rows} rationales but none is kept (none led the teacher to the right answer): "
            "loosen the filter (e.g. --set rationales.filter=f1 --set rationales.f1_threshold=0.3) or draw "
            "more samples (rationales.samples_per_question), then rerun `lmcot generate-rationales`"
        )
    rows.sort(key=lambda r: (r.get("dataset") or "", r["id"], r.get("sample") or 0))
    return rows


# -- contexts and pairs --------------------------------------------------------------------
def rows_needing_context(rows: Iterable[dict]) -> list[dict]:
    """Rows that carry no usable ``context`` column (old or foreign shards)."""
    return [r for r in rows if not (r.get("context") or "").strip()]


def rebuild_contexts(rows: Sequence[dict], examples: Mapping[tuple[str, str], object], *, mode: str,
                     tokenizer=None, max_tokens: int = 0) -> dict[tuple[str, str], str]:
    """Context per (dataset, id) of ``rows``, rebuilt from ``examples`` keyed the same way.

    A row without a ``dataset`` value is matched by id alone. Raises ValueError naming
    the id when a row has no example (its dataset is not in ``data.datasets``).
    """
    from lmcot.datasets.context import build_context

    by_id = {key[1]: ex for key, ex in examples.items()}
    out: dict[tuple[str, str], str] = {}
    for r in rows:
        key = (r.get("dataset") or "", r["id"])
        if key in out:
            continue
        ex = examples.get(key) if key[0] else by_id.get(key[1])
        if ex is None:
            raise ValueError(
                f"rationale row {key[1]!r} (dataset {key[0] or '?'!r}) has no context column and no example in the "
                "training splits of data.datasets: distill with the data config the rationales were generated from"
            )
        out[key] = build_context(ex, mode=mode, tokenizer=tokenizer, max_tokens=max_tokens)
    return out


def build_pairs(rows: Iterable[dict], contexts: Mapping[tuple[str, str], str] | None = None,
                limit: int = 0) -> list[SFTPair]:
    """One pair per kept row: the small-LM rationale prompt and the teacher's rationale.

    >>> rows = [{"dataset": "h", "id": "1", "sample": 0, "question": "Who?", "context": "A: Ann.",
    ...          "rationale": " Ann is A. ", "kept": True}]
    >>> p = build_pairs(rows)[0]
    >>> p.target, p.prompt.endswith("Question: Who?\\nRationale:")
    ('Ann is A.', True)
    """
    contexts = contexts or {}
    pairs = []
    for r in rows:
        key = (r.get("dataset") or "", r["id"])
        context = (r.get("context") or "").strip() and r["context"]
        if not context:
            context = contexts[key]
        pairs.append(SFTPair(dataset=key[0], id=r["id"], sample=int(r.get("sample") or 0),
                             prompt=ROLES["small"].build(r["question"], context), target=r["rationale"].strip()))
        if limit and len(pairs) >= limit:
            break
    return pairs


def split_pairs(pairs: Sequence[SFTPair], eval_fraction: float, seed: int = 0) -> tuple[list[SFTPair], list[SFTPair]]:
    """(train, validation) split by question: ``ceil(fraction x questions)`` questions, chosen by a seeded hash.

    At least one question is held out when ``eval_fraction > 0`` and there are two or more
    questions; training always keeps at least one.

    >>> ps = [SFTPair("h", str(i), s, "p", "t") for i in range(10) for s in range(2)]
    >>> train, val = split_pairs(ps, 0.2)
    >>> len(val), len({p.id for p in val}), len(train)
    (4, 2, 16)
    """
    questions = sorted({(p.dataset, p.id) for p in pairs},
                       key=lambda q: (zlib.crc32(f"{seed}\x00{q[0]}\x00{q[1]}".encode()), q))
    n_val = 0
    if eval_fraction > 0 and len(questions) >= 2:
        n_val = min(len(questions) - 1, max(1, math.ceil(eval_fraction * len(questions))))
    held = set(questions[:n_val])
    train = [p for p in pairs if (p.dataset, p.id) not in held]
    val = [p for p in pairs if (p.dataset, p.id) in held]
    return train, val


def pairs_fingerprint(pairs: Sequence[SFTPair]) -> str:
    """A short hash of the pairs' content: a distilled model is reused only for the same data."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.dataset, p.id, p.sample, p.prompt, p.target]).encode())
    return h.hexdigest()[:16]


# -- tokenisation --------------------------------------------------------------------------
def format_prompt(tokenizer, prompt: str, family: str, chat_template: bool = True) -> str:
    """The prompt text as the generator feeds it (chat template for causal models that have one)."""
    return PromptFitter(model="", limit=0, tokenizer=tokenizer, family=family, chat_template=chat_template).format(prompt)


def encode_pairs(tokenizer, pairs: Sequence[SFTPair], *, family: str, max_source_tokens: int,
                 max_target_tokens: int, chat_template: bool = True, fitter: PromptFitter | None = None,
                 reserve: int = 0) -> "TokenizedPairs":
    """Tokenise pairs for ``family`` (``seq2seq`` or ``causal``); see the module doc for the labels.

    Prompts are fitted exactly as the generator fits them at inference (``fitter``: the small
    LM's, with ``reserve`` new tokens for a causal model): only the context is ever shortened,
    never the instruction or the question. Without a fitter, ``max_source_tokens`` is the limit.
    """
    if family not in ("seq2seq", "causal"):
        raise ValueError(f"family {family!r} must be seq2seq or causal")
    fitter = fitter or PromptFitter(model="the small LM", limit=max_source_tokens, tokenizer=tokenizer,
                                    family=family, chat_template=chat_template, field="distill.max_source_tokens")
    fitted = fitter.fit_all([p.prompt for p in pairs], reserve)
    texts = [f.text for f in fitted]
    sources = tokenizer(texts)["input_ids"] if texts else []
    if family == "seq2seq":
        full_targets = tokenizer([p.target for p in pairs])["input_ids"] if pairs else []
    else:
        if tokenizer.eos_token_id is None:
            raise ValueError("the small LM's tokenizer has no eos token: a causal model could never learn to stop")
        # A plain prompt ending in "Rationale:" is continued with " word" (byte-level BPE): train that
        # spacing. A chat template ends the turn itself, and the reply starts without a space.
        templated = chat_template and bool(getattr(tokenizer, "chat_template", None))
        lead = ["" if templated or t[-1:].isspace() else " " for t in texts]
        encoded = tokenizer([s + p.target for s, p in zip(lead, pairs)], add_special_tokens=False)["input_ids"] if pairs else []
        full_targets = [ids + [tokenizer.eos_token_id] for ids in encoded]
    targets = [ids[:max_target_tokens] for ids in full_targets]
    out = TokenizedPairs.from_lists(family, sources, targets)
    out.truncated_sources = sum(f.context_cut for f in fitted)
    out.truncated_targets = sum(len(a) > max_target_tokens for a in full_targets)
    return out


class TokenizedPairs:
    """Tokenised pairs as ragged int32 arrays; a map-style torch dataset of ``{input_ids, labels}`` rows."""

    def __init__(self, family: str, source: np.ndarray, source_offsets: np.ndarray,
                 target: np.ndarray, target_offsets: np.ndarray):
        self.family = family
        self.source, self.source_offsets = source, source_offsets
        self.target, self.target_offsets = target, target_offsets
        self.truncated_sources = 0
        """Prompts whose context was shortened to fit the small LM's limit (as it is at inference)."""
        self.truncated_targets = 0
        """Rationales cut to ``max_target_tokens``."""

    @classmethod
    def from_lists(cls, family: str, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]):
        def ragged(seqs):
            lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
            return flat, offsets

        return cls(family, *ragged(sources), *ragged(targets))

    def __len__(self) -> int:
        return len(self.source_offsets) - 1

    def source_ids(self, i: int) -> list[int]:
        return self.source[self.source_offsets[i]:self.source_offsets[i + 1]].tolist()

    def target_ids(self, i: int) -> list[int]:
        return self.target[self.target_offsets[i]:self.target_offsets[i + 1]].tolist()

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        src, tgt = self.source_ids(i), self.target_ids(i)
        if self.family == "seq2seq":
            return {"input_ids": src, "labels": tgt}
        return {"input_ids": src + tgt, "labels": [IGNORE_INDEX] * len(src) + tgt}

    def select(self, indices: Sequence[int]) -> "TokenizedPairs":
        return TokenizedPairs.from_lists(self.family, [self.source_ids(i) for i in indices],
                                         [self.target_ids(i) for i in indices])

    def token_counts(self) -> tuple[int, int]:
        """(prompt tokens, target tokens) over all pairs."""
        return int(self.source_offsets[-1]), int(self.target_offsets[-1])


@dataclass
class CompletionCollator:
    """Right-pads a list of ``{input_ids, labels}`` rows into tensors; labels pad with -100.

    >>> b = CompletionCollator(pad_token_id=0)([{"input_ids": [5, 6], "labels": [-100, 6]}, {"input_ids": [7], "labels": [7]}])
    >>> b["input_ids"].tolist(), b["attention_mask"].tolist(), b["labels"].tolist()
    ([[5, 6], [7, 0]], [[1, 1], [1, 0]], [[-100, 6], [7, -100]])
    """

    pad_token_id: int
    pad_to_multiple_of: int = 1

    def _width(self, n: int) -> int:
        m = self.pad_to_multiple_of
        return -(-n // m) * m

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = self._width(max(len(r["input_ids"]) for r in rows))
        label_width = self._width(max(len(r["labels"]) for r in rows))
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), label_width), IGNORE_INDEX, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"], dtype=torch.long)
            mask[i, : len(r["input_ids"])] = 1
            labels[i, : len(r["labels"])] = torch.tensor(r["labels"], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# -- checks --------------------------------------------------------------------------------
def check_tokenizer_vocab(tokenizer, vocab_size: int, path: str) -> None:
    """Fail when the tokenizer can emit ids the model has no embedding for (checked from the config alone)."""
    size = len(tokenizer)
    if size > vocab_size:
        raise ValueError(
            f"the tokenizer next to {path!r} has {size} tokens but the model's vocab_size is {vocab_size}: "
            "it is not this model's tokenizer; save the tokenizer the model was trained with next to it "
            "(config key small.name_or_path)"
        )
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None and value >= vocab_size:
            raise ValueError(f"the tokenizer of {path!r} has {name}={value} outside the model's vocab ({vocab_size})")


def sample_prompts(tokenizer, pairs: Sequence[SFTPair], n: int, family: str, chat_template: bool = True) -> list[dict]:
    """The first ``n`` pairs as ``{id, prompt (formatted), reference}`` for logging sampled rationales."""
    return [{"id": p.id, "prompt": format_prompt(tokenizer, p.prompt, family, chat_template), "reference": p.target}
            for p in pairs[:n]]
