"""The teacher's side of rationale distillation, without Ray: prompts, parsing, scoring, shards.

Rationale distillation starts from the large LM's rationales for the training set,
kept only where the teacher's own answer from the rationale is right. This module
holds everything about that step that does not need a cluster, so it is tested in
milliseconds and the Ray Data stage (``lmcot.stages.rationales``) is only plumbing:

- :func:`question_rows` turns examples into one input row per question that still
  needs samples; :func:`teacher_prompt` builds its context and prompt (in the actor,
  with the teacher's tokenizer, so the budget is counted in the teacher's tokens).
- :func:`generate_rows` runs a :class:`~lmcot.models.generation.Generator` on a batch of
  those rows and returns one output row per (question, sample): ``k`` samples come
  from one call with ``n=k`` (sampled at ``generation.temperature``), one sample is greedy.
- :func:`judge_output` parses and scores one teacher output; an output with no
  parsable answer is ``kept=False`` with a ``reason``, never an error (unless the
  filter keeps everything: ``filter: f1`` with ``f1_threshold: 0``).
- :func:`rationale_store` is the writer of ``RUN/rationales/``: the shard store of
  :mod:`lmcot.runs.shards` (a lock, atomic fsynced shards, each (dataset, id, sample) key
  once, a manifest) for rows of :data:`SCHEMA`. A killed run loses at most the rows it had
  not flushed yet; a rerun generates exactly those.
- :func:`teacher_manifest` is what existing rows must share with a rerun's before it may
  add to them. It is not the stage identity (:func:`lmcot.stages.rationales.stage_identity`)
  under another name: that one says whether the stage is done, and changes with the
  dataset list or the filter, which keep every row on disk valid (a rerun adds the missing
  rows, :func:`refilter` re-decides the rest); this one changes only with what would make
  old and new rows disagree (teacher, context, decoding), and then refuses to mix them.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import pyarrow as pa

from lmcot.config import Config, DataConfig, RationalesConfig
from lmcot.datasets.context import build_context
from lmcot.datasets.data import Example, parse_records, to_official_json
from lmcot.scoring.metrics import answer_metrics, gold_answers
from lmcot.training.faithfulness import is_faithful
from lmcot.prompting.prompts import ANSWER_CUE, parse_answer, split_rationale
from lmcot.prompting.roles import ROLES
from lmcot.runs.shards import ShardStore, read_shard, read_shards, shard_paths, write_shard

if TYPE_CHECKING:
    from lmcot.models.generation import Generator

Key = tuple[str, str, int]
"""(dataset, id, sample): one rationale row."""

SCHEMA = pa.schema([
    ("dataset", pa.string()),
    ("id", pa.string()),
    ("sample", pa.int64()),
    ("question", pa.string()),
    ("context", pa.string()),
    ("rationale", pa.string()),
    ("output", pa.string()),
    ("teacher_answer", pa.string()),
    ("gold_answer", pa.string()),
    ("em", pa.float64()),
    ("f1", pa.float64()),
    ("kept", pa.bool_()),
    ("reason", pa.string()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("teacher", pa.string()),
])
"""Columns of every shard. ``output`` is the teacher's raw text; ``reason`` is empty for kept rows."""

REASONS = ("empty_output", "no_answer", "wrong_answer", "low_f1")
"""What is wrong with a row's answer: no text at all, no answer cue (both set even when
``f1_threshold: 0`` keeps the row), EM = 0 (``em`` filter), F1 below the threshold. Empty for a
kept row with an answer."""


# -- input rows --------------------------------------------------------------------------
def question_rows(examples: Sequence[Example], dataset: str, samples_per_question: int,
                  done: set[Key] | frozenset = frozenset(), aliases: dict | None = None) -> list[dict]:
    """One row per question that still lacks some of its ``samples_per_question`` samples.

    A row carries the example as an official record (``record``, JSON) so the actor can
    rebuild its context, the gold answers (answer first, then 2Wiki aliases) and the
    sample indices still missing.

    >>> from lmcot.datasets.data import Example, Paragraph
    >>> ex = Example("q1", "Who?", "Ann", (Paragraph("A", ("Ann.",)),), (("A", 0),), "bridge", "hotpotqa")
    >>> [(r["id"], r["samples"]) for r in question_rows([ex], "hotpotqa", 3, done={("hotpotqa", "q1", 1)})]
    [('q1', [0, 2])]
    """
    aliases = aliases or {}
    rows = []
    for ex in examples:
        missing = [s for s in range(samples_per_question) if (dataset, ex.id, s) not in done]
        if not missing:
            continue
        golds = gold_answers(ex.answer, ex.answer_id, aliases)
        rows.append({
            "dataset": dataset, "id": ex.id, "format": ex.dataset, "question": ex.question,
            "golds": golds, "samples": missing,
            "record": json.dumps(to_official_json([ex])[0], ensure_ascii=False),
        })
    return rows


def expected_keys(examples: Sequence[Example], dataset: str, samples_per_question: int) -> set[Key]:
    """Every (dataset, id, sample) key a complete run over ``examples`` writes."""
    return {(dataset, ex.id, s) for ex in examples for s in range(samples_per_question)}


def teacher_prompt(row: dict, data: DataConfig, tokenizer=None) -> tuple[str, str]:
    """(context, prompt) of an input row: context fitted to ``data.context_max_tokens`` teacher tokens."""
    example = parse_records([json.loads(row["record"])], row["format"], f"rationale row {row['id']}")[0]
    context = build_context(example, mode=data.context_mode, tokenizer=tokenizer, max_tokens=data.context_max_tokens)
    return context, ROLES["teacher"].build(example.question, context)


# -- parsing and scoring -----------------------------------------------------------------
def judge_output(text: str, golds: Sequence[str], rc: RationalesConfig, context: str = "") -> dict:
    """Rationale, teacher answer, EM/F1 against the gold answers, and whether the filter keeps it.

    >>> from lmcot.config import RationalesConfig
    >>> r = judge_output("A is in B. So the answer is: Paris.", ["paris"], RationalesConfig())
    >>> (r["rationale"], r["teacher_answer"], r["em"], r["kept"], r["reason"])
    ('A is in B.', 'Paris', 1.0, True, '')
    >>> judge_output("I do not know", ["paris"], RationalesConfig())["reason"]
    'no_answer'
    """
    rationale, answer = split_rationale(text or "")
    if answer is None:
        unanswered = "no_answer" if (text or "").strip() else "empty_output"
        kept, reason = keeps(0.0, 0.0, unanswered, rc)
        return dict(rationale=rationale, teacher_answer="", em=0.0, f1=0.0, kept=kept, reason=reason)
    scores = answer_metrics(answer, list(golds))
    kept, reason = keeps(scores["em"], scores["f1"], "", rc, faithful=is_faithful(rationale, context))
    return dict(rationale=rationale, teacher_answer=answer, em=scores["em"], f1=scores["f1"], kept=kept, reason=reason)


UNANSWERED = ("no_answer", "empty_output")


def keeps(em: float, f1: float, unanswered: str, rc: RationalesConfig, faithful: bool = True) -> tuple[bool, str]:
    """The filter alone: (kept, reason) of a scored row. An unanswered row (``no_answer`` or
    ``empty_output``) scores 0, which only ``filter: f1`` with ``f1_threshold: 0`` accepts. With
    ``require_faithful``, a right answer from a rationale naming what its context never states is
    dropped too (reason ``unfaithful``; :mod:`lmcot.training.faithfulness`).

    >>> from lmcot.config import RationalesConfig
    >>> keeps(0.0, 0.5, "", RationalesConfig(filter="f1", f1_threshold=0.4))
    (True, '')
    >>> keeps(0.0, 0.5, "", RationalesConfig(filter="em"))
    (False, 'wrong_answer')
    """
    if unanswered:
        return rc.filter == "f1" and rc.f1_threshold == 0.0, unanswered
    if rc.filter == "em":
        kept, reason = em == 1.0, "wrong_answer"
    else:
        kept, reason = f1 >= rc.f1_threshold, "low_f1"
    if kept and rc.require_faithful and not faithful:
        kept, reason = False, "unfaithful"
    return bool(kept), "" if kept else reason


def refilter(root: Path, rc: RationalesConfig) -> int:
    """Apply the current filter to every finished shard (rows keep their scores; ``kept`` and
    ``reason`` are recomputed), rewriting only the shards whose decisions change. A rerun with a
    looser or stricter ``rationales.filter`` / ``f1_threshold`` then filters what was already
    generated instead of keeping the old decisions. Returns the rows whose decision changed."""
    changed = 0
    for path in shard_paths(root):
        table = read_shard(path)
        cols = {name: table[name].to_pylist() for name in ("em", "f1", "reason", "kept", "rationale", "context")}
        decisions = [keeps(em, f1, reason if reason in UNANSWERED else "", rc, faithful=is_faithful(rat, ctx))
                     for em, f1, reason, rat, ctx in zip(cols["em"], cols["f1"], cols["reason"], cols["rationale"],
                                                         cols["context"])]
        if [d[0] for d in decisions] == cols["kept"] and [d[1] for d in decisions] == cols["reason"]:
            continue
        changed += sum(d[0] != k for d, k in zip(decisions, cols["kept"]))
        table = table.set_column(table.schema.get_field_index("kept"), "kept", pa.array([d[0] for d in decisions]))
        table = table.set_column(table.schema.get_field_index("reason"), "reason",
                                 pa.array([d[1] for d in decisions], pa.string()))
        write_shard(path, table)
    return changed


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers that sum to it (the first ones get the remainder).

    >>> split_evenly(7, 3)
    [3, 2, 2]
    """
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def call_seed(seed: int, rows: Sequence[dict]) -> int:
    """A sampling seed fixed by the batch's ids, so a rerun of the same batch draws the same samples."""
    return (seed + zlib.crc32("\n".join(r["id"] for r in rows).encode())) % (2**31)


def generate_rows(generator: Generator, rows: Sequence[dict], cfg: Config, tokenizer=None,
                  teacher: str = "") -> list[dict]:
    """Generate the missing samples of each input row and return one output row per sample.

    Rows needing the same number of samples share one ``generate`` call with ``n`` samples
    per prompt. Sampling (``generation.temperature``) is used whenever
    ``rationales.samples_per_question > 1``, greedy decoding otherwise.
    """
    gen, rc = cfg.generation, cfg.rationales
    sampled = rc.samples_per_question > 1
    prepared = [(row, *teacher_prompt(row, cfg.data, tokenizer)) for row in rows]
    by_n: dict[int, list[tuple[dict, str, str]]] = {}
    for item in prepared:
        by_n.setdefault(len(item[0]["samples"]), []).append(item)
    out = []
    for n, items in sorted(by_n.items()):
        generations = generator.generate(
            [prompt for _, _, prompt in items], max_new_tokens=ROLES["teacher"].reserve(gen), n=n,
            temperature=gen.temperature if sampled else 0.0, top_p=gen.top_p if sampled else 1.0,
            seed=call_seed(gen.seed, [row for row, _, _ in items]),
        )
        for (row, context, _), g in zip(items, generations):
            texts = list(g.texts) + [""] * (n - len(g.texts))  # a backend that returned fewer: judged empty
            completion = split_evenly(g.completion_tokens, n)
            for sample, text, tokens in zip(row["samples"], texts, completion):
                out.append({
                    "dataset": row["dataset"], "id": row["id"], "sample": int(sample), "question": row["question"],
                    "context": context, "output": text, "gold_answer": row["golds"][0],
                    **judge_output(text, row["golds"], rc, context),
                    "prompt_tokens": int(g.prompt_tokens), "completion_tokens": int(tokens), "teacher": teacher,
                })
    if rc.judged_answer == "from_rationale":
        golds = {(row["dataset"], row["id"]): row["golds"] for row in rows}
        rejudge_from_rationale(generator, out, golds, cfg)
    return out


def rejudge_from_rationale(generator: Generator, rows: list[dict], golds: dict, cfg: Config) -> None:
    """Score each rationale by the large LM's greedy answer *from it* (what LM-guided inference does).

    ``teacher_answer``, ``em``, ``f1``, ``kept`` and ``reason`` then describe that answer; rows
    without a rationale keep their verdict. ``golds``: (dataset, id) -> gold answers with aliases.
    """
    todo = [r for r in rows if r["rationale"].strip()]
    answers = generator.generate(
        [ROLES["answer"].build(r["question"], r["context"], r["rationale"]) for r in todo],
        max_new_tokens=ROLES["answer"].reserve(cfg.generation),
    )
    for r, g in zip(todo, answers):
        r.update(judge_output(f"{r['rationale']} {ANSWER_CUE} {parse_answer(g.texts[0])}",
                              golds[(r["dataset"], r["id"])], cfg.rationales, r["context"]))
        r["prompt_tokens"] += int(g.prompt_tokens)
        r["completion_tokens"] += int(g.completion_tokens)


def rows_to_table(rows: Sequence[dict]) -> pa.Table:
    """Output rows as an Arrow table with :data:`SCHEMA` (column order and types fixed)."""
    return pa.Table.from_pylist(list(rows), schema=SCHEMA)


def teacher_manifest(cfg: Config) -> dict:
    """What makes rationales comparable across reruns: teacher, prompt context and decoding."""
    g = cfg.generation
    return {
        "teacher": cfg.large.name_or_path, "revision": cfg.large.revision, "backend": cfg.large.backend,
        "context_mode": cfg.data.context_mode, "context_max_tokens": cfg.data.context_max_tokens,
        "rationale_max_new_tokens": g.rationale_max_new_tokens,
        "temperature": g.temperature if cfg.rationales.samples_per_question > 1 else 0.0,
    }


# -- shards --------------------------------------------------------------------------------
KEY_COLUMNS = ("dataset", "id", "sample")
"""The columns of a row's :data:`Key`: a key is written once."""


def rationale_store(root: Path, shard_rows: int = 512, expected: int = 0) -> ShardStore:
    """The writer of ``RUN/rationales/`` (:class:`~lmcot.runs.shards.ShardStore`): rows of
    :data:`SCHEMA`, each (dataset, id, sample) key once; ``expected`` rows when complete (0: unknown)."""
    return ShardStore(root, schema=SCHEMA, key_columns=KEY_COLUMNS, shard_rows=shard_rows, expected=expected,
                      command="generate-rationales")


def read_rationales(root: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Every shard as one table (empty with :data:`SCHEMA` when none exists)."""
    return read_shards(root, columns, required=columns or (), empty=SCHEMA)


def summarize(root: Path) -> dict:
    """Totals over all shards: rows, kept, kept ratio, EM/F1, reasons and tokens, overall and per dataset."""
    t = read_rationales(root, ["dataset", "kept", "reason", "em", "f1", "prompt_tokens", "completion_tokens",
                               "rationale", "context"])
    cols = {name: t[name].to_pylist() for name in t.column_names}
    faithful = [is_faithful(r, c) for r, c in zip(cols.pop("rationale"), cols.pop("context"))]

    def block(idx: list[int]) -> dict:
        n = len(idx)
        kept = sum(1 for i in idx if cols["kept"][i])
        reasons: dict[str, int] = {}
        for i in idx:
            if cols["reason"][i]:
                reasons[cols["reason"][i]] = reasons.get(cols["reason"][i], 0) + 1
        return {
            "rows": n, "kept": kept, "kept_ratio": kept / n if n else 0.0,
            "faithful_ratio": sum(faithful[i] for i in idx) / n if n else 0.0,
            "kept_faithful_ratio": sum(faithful[i] for i in idx if cols["kept"][i]) / kept if kept else 0.0,
            "em": sum(cols["em"][i] for i in idx) / n if n else 0.0,
            "f1": sum(cols["f1"][i] for i in idx) / n if n else 0.0,
            "reasons": dict(sorted(reasons.items())),
            "prompt_tokens": sum(cols["prompt_tokens"][i] for i in idx),
            "completion_tokens": sum(cols["completion_tokens"][i] for i in idx),
        }

    everything = list(range(t.num_rows))
    per_dataset: dict[str, list[int]] = {}
    for i, name in enumerate(cols["dataset"]):
        per_dataset.setdefault(name, []).append(i)
    summary = block(everything)
    summary["datasets"] = {name: block(idx) for name, idx in sorted(per_dataset.items())}
    return summary


def check_generation_settings(cfg: Config) -> None:
    """Fail before any worker starts when the decoding settings cannot give the samples asked for."""
    if cfg.rationales.samples_per_question > 1 and cfg.generation.temperature <= 0:
        raise ValueError(
            f"rationales.samples_per_question={cfg.rationales.samples_per_question} needs sampling, but "
            "generation.temperature is 0: set generation.temperature > 0 (e.g. 0.7) or samples_per_question: 1"
        )

