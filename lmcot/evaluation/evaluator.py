"""Evaluate a method on official-format dev data: predictions, metrics and a short report.

Pure core: the models come in as :class:`~lmcot.models.generation.Generator` objects, so the
same loop serves the ``lmcot eval`` command, the pipeline and the tests.
"""

from __future__ import annotations

from typing import Sequence

from tqdm.auto import tqdm

from lmcot.config import EvalConfig, GenerationConfig
from lmcot.config.evaluation import ORACLE_METHODS
from lmcot.datasets.context import ORACLE_MODES, build_context
from lmcot.datasets.data import Example
from lmcot.models.generation import Generator, Usage
from lmcot.inference.adaptive import run_adaptive
from lmcot.inference.method import MethodResult, Question
from lmcot.scoring.metrics import answer_metrics, gold_answers, score_predictions
from lmcot.evaluation.statistics import is_binary
from lmcot.runs.evals import write_evaluation
from lmcot.runs.rundir import RunDir


def prepare_questions(examples: Sequence[Example], *, mode: str, tokenizer=None, max_tokens: int = 0) -> list[Question]:
    """Contexts built in ``mode``'s paragraph order and fitted to ``max_tokens`` (:func:`~lmcot.datasets.context.build_context`)."""
    return [
        Question(ex.id, ex.question, build_context(ex, mode=mode, tokenizer=tokenizer, max_tokens=max_tokens),
                 evidence=ex.rationale or ex.evidence)
        for ex in examples
    ]


def evaluate(
    questions: Sequence[Question],
    *,
    method: str,
    k: int,
    small: Generator | None,
    large: Generator,
    gen: GenerationConfig,
    chunk_size: int = 32,
    desc: str = "eval",
    adaptive: bool = False,
    round_size: int = 2,
) -> list[MethodResult]:
    """Run ``method`` over all questions in chunks (a progress bar per chunk); with ``adaptive``, the k
    samples in rounds of ``round_size`` (:func:`lmcot.inference.adaptive.run_adaptive`)."""
    results: list[MethodResult] = []
    chunks = range(0, len(questions), chunk_size)
    for start in tqdm(chunks, desc=desc, unit="chunk", disable=len(chunks) < 2):
        results += run_adaptive(method, questions[start : start + chunk_size], small=small, large=large, gen=gen,
                                k=k, round_size=round_size, adaptive=adaptive)
    return results


def summarize(examples: Sequence[Example], results: Sequence[MethodResult], aliases: dict | None = None) -> dict:
    """Official answer metrics plus the cost per question of each model.

    Prompt and completion tokens are kept apart: completion tokens of the large LM are what
    LM-guided CoT saves. ``n`` samples of one prompt count its prompt tokens once, as the
    generators prefill it once and as OpenAI-compatible servers report ``usage`` for ``n``.
    """
    predictions = {"answer": {r.id: r.answer for r in results}}
    metrics = score_predictions(list(examples), predictions, aliases)
    metrics[QUESTION_SCORES] = question_scores(examples, results, aliases)
    n = max(1, len(results))
    for role in ("small", "large"):
        total = Usage()
        for r in results:
            total.add(r.usage[role])
        metrics[f"{role}_calls_per_question"] = total.calls / n
        metrics[f"{role}_prompt_tokens_per_question"] = total.prompt_tokens / n
        metrics[f"{role}_completion_tokens_per_question"] = total.completion_tokens / n
        metrics[f"{role}_tokens_per_question"] = (total.prompt_tokens + total.completion_tokens) / n
    return metrics


QUESTION_SCORES = "questions"
"""Key of :func:`summarize`'s per-question scores; :func:`write_outputs` moves them from the metrics
into the per-question details, where the report's paired comparisons read them."""


def question_scores(examples: Sequence[Example], results: Sequence[MethodResult], aliases: dict | None = None) -> dict:
    """id -> EM and F1 of the answer, whether the question is binary, and the F1 of every sampled
    answer (self-consistency's samples: their mean and best show what a vote could reach)."""
    by_id = {r.id: r for r in results}
    out = {}
    for ex in examples:
        r = by_id.get(ex.id)
        golds = gold_answers(ex.answer, ex.answer_id, aliases)
        scores = answer_metrics(r.answer if r else "", golds)
        out[ex.id] = {"em": scores["em"], "f1": scores["f1"], "binary": is_binary(ex.question, ex.answer),
                      "sample_f1": [answer_metrics(a, golds)["f1"] for a in (r.answers if r else [])]}
    return out


def write_outputs(run_dir: RunDir, cfg: EvalConfig, per_dataset: dict[str, tuple[list[MethodResult], dict]],
                  context_mode: str = "all") -> dict:
    """The evaluation's predictions (official format), metrics, per-question details and report."""
    answers = {r.id: r.answer for results, _ in per_dataset.values() for r in results}
    scores = {name: metrics.pop(QUESTION_SCORES, {}) for name, (_, metrics) in per_dataset.items()}
    summary = {
        "method": cfg.method,
        "self_consistency": cfg.self_consistency,
        "label": cfg.output_label,
        "context_mode": context_mode,
        "oracle": context_mode in ORACLE_MODES or cfg.method in ORACLE_METHODS,
        "datasets": {name: metrics for name, (_, metrics) in per_dataset.items()},
    }
    details = [{"dataset": name, "id": r.id, "answer": r.answer, "votes": r.votes, "answers": r.answers,
                "rationales": r.rationales, **scores[name].get(r.id, {}),
                "usage": {k: u.as_dict() for k, u in r.usage.items()}}
               for name, (results, _) in per_dataset.items() for r in results]
    write_evaluation(run_dir.eval_dir(cfg.output_label), predictions={"answer": answers, "sp": {}}, metrics=summary,
                     details=details, report=render_report(summary))
    return summary


def render_report(summary: dict) -> str:
    rows = [
        f"# Evaluation: {summary['label']}",
        "",
        f"Method `{summary['method']}`, self-consistency k={summary['self_consistency']}.",
        "",
        "| dataset | n | EM | F1 | precision | recall | large-LM calls/q | large-LM prompt tok/q | "
        "large-LM completion tok/q | small-LM tokens/q |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in summary["datasets"].items():
        rows.append(
            f"| {name} | {m['n']} | {100 * m['em']:.1f} | {100 * m['f1']:.1f} | {100 * m['prec']:.1f} | "
            f"{100 * m['recall']:.1f} | {m['large_calls_per_question']:.2f} | "
            f"{m.get('large_prompt_tokens_per_question', 0):.0f} | {m.get('large_completion_tokens_per_question', 0):.0f} | "
            f"{m['small_tokens_per_question']:.0f} |"
        )
    rows += ["", "Token counts are those of the fitted prompts the models received; the n samples of one prompt "
             "count its prompt once (one prefill, as OpenAI-compatible servers bill n)."]
    if summary.get("context_mode") in ORACLE_MODES:
        rows += ["", f"**Oracle setting**: data.context_mode={summary['context_mode']} reads the gold supporting "
                 "facts to build the context; not comparable with a fair evaluation."]
    if summary["method"] in ORACLE_METHODS:
        rows += ["", f"**Oracle reference**: method {summary['method']} answers from the gold supporting facts; "
                 "an upper bound, not comparable with a fair evaluation."]
    return "\n".join(rows) + "\n"


def rationale_rows(questions: Sequence[Question], results: Sequence[MethodResult]) -> tuple[list, list, list]:
    """(questions, contexts, rationales): one row per rationale the method wrote, as the judge reads them."""
    by_id = {q.id: q for q in questions}
    qs, ctxs, rats = [], [], []
    for r in results:
        for rationale in r.rationales:
            q = by_id[r.id]
            qs.append(q.question)
            ctxs.append(q.context)
            rats.append(rationale)
    return qs, ctxs, rats


def judge_rationales(questions: Sequence[Question], results: Sequence[MethodResult], judge) -> dict[str, float]:
    """Mean large-LM aspect score (P(yes)) of every rationale the method wrote.

    ``judge`` is a :class:`lmcot.training.rewards.RewardJudge`; all aspects of all rationales go
    to the large LM in one batched scoring call.
    """
    qs, ctxs, rats = rationale_rows(questions, results)
    if not rats:
        return {}
    scores = judge.aspect_scores(qs, ctxs, rats)
    return {aspect: sum(values) / len(values) for aspect, values in scores.items()}
