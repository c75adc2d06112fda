"""The paper-style report, from run-directory files alone.

The report's input here is written by the same functions the stages write with (the
JSONL helpers, ``RunDir`` paths); ``tests/stages/test_pipeline.py`` checks the report on
the tiny pipeline's real output.
"""

import pytest

from lmcot.evaluation.report import write_report
from lmcot.runs.jsonl import write_jsonl
from lmcot.runs.rundir import RunDir, write_json


def _metrics(label, k, f1, tokens, context_mode="all"):
    ds = {"em": f1 / 2, "f1": f1, "prec": f1, "recall": f1, "n": 4, "missing": 0,
          "large_calls_per_question": k, "large_tokens_per_question": tokens,
          "large_prompt_tokens_per_question": tokens - 20, "large_completion_tokens_per_question": 20,
          "small_calls_per_question": 1, "small_tokens_per_question": 10}
    return {"method": label.split("-")[0], "self_consistency": k, "label": label, "context_mode": context_mode,
            "oracle": context_mode in ("gold", "gold_first"), "datasets": {"hotpotqa": ds, "2wiki": ds}}


def test_report_tables_plots_and_finding(tmp_path):
    run = RunDir(tmp_path)
    for label, k, f1, tokens in (("standard", 1, 0.2, 300), ("lm_guided-distilled", 1, 0.3, 320),
                                 ("lm_guided-refined", 1, 0.4, 330), ("lm_guided-refined-sc5", 5, 0.5, 1600)):
        write_json(run.eval_metrics(label), _metrics(label, k, f1, tokens))
    aspects = {a: 0.5 for a in ("factuality", "relevance")}
    write_json(run.eval_aspects("lm_guided-distilled"), aspects)
    write_json(run.eval_aspects("lm_guided-refined"), {a: 0.7 for a in aspects})
    write_jsonl(run.metrics("refine"), [{"step": i, "reward": i / 10, "loss": 1 - i / 10, "kl": 0.01 * i}
                                        for i in range(5)])
    write_jsonl(run.metrics("distill"), [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "eval_loss": 1.7}])
    text = write_report(run).read_text()
    assert "| lm_guided-refined-sc5 | 5 | 25.0 | 50.0 | 25.0 | 50.0 |" in text
    assert "| lm_guided-refined | 0.700 | 0.700 |" in text
    assert "| standard | 1.00 | 280 | 20 | 10 |" in text, "prompt and completion tokens apart"
    assert "Oracle" not in text
    assert "moved together" in text
    for png in ("accuracy", "cost", "aspects", "curves"):
        assert run.report_figure(png).stat().st_size > 1000
        assert f"]({run.report_figure(png).relative_to(run.root).as_posix()})" in text


def test_finding_reports_quality_and_accuracy_moving_apart(tmp_path):
    run = RunDir(tmp_path)
    write_json(run.eval_metrics("lm_guided-distilled"), _metrics("lm_guided-distilled", 1, 0.4, 1))
    write_json(run.eval_metrics("lm_guided-refined"), _metrics("lm_guided-refined", 1, 0.3, 1))
    write_json(run.eval_aspects("lm_guided-distilled"), {"fluency": 0.2})
    write_json(run.eval_aspects("lm_guided-refined"), {"fluency": 0.9})
    assert "moved apart (in opposite directions)" in write_report(run).read_text()


@pytest.mark.parametrize("quality_after, f1_after, verdict", [
    (0.501, 0.419, "moved apart (accuracy changed, quality stayed flat)"),  # the tiny world's +0.001 / +1.9
    (0.700, 0.402, "moved apart (quality changed, accuracy stayed flat)"),
    (0.503, 0.398, "both stayed flat"),
])
def test_finding_calls_changes_within_noise_flat(tmp_path, quality_after, f1_after, verdict):
    run = RunDir(tmp_path)
    write_json(run.eval_metrics("lm_guided-distilled"), _metrics("lm_guided-distilled", 1, 0.4, 1))
    write_json(run.eval_metrics("lm_guided-refined"), _metrics("lm_guided-refined", 1, f1_after, 1))
    write_json(run.eval_aspects("lm_guided-distilled"), {"fluency": 0.5})
    write_json(run.eval_aspects("lm_guided-refined"), {"fluency": quality_after})
    text = write_report(run).read_text()
    assert f"**{verdict}** (flat: a change under 0.005 in quality, 0.5 points in F1)" in text


def test_oracle_context_modes_are_marked(tmp_path):
    run = RunDir(tmp_path)
    write_json(run.eval_metrics("cot"), _metrics("cot", 1, 0.1, 100, context_mode="gold_first"))
    text = write_report(run).read_text()
    assert "| cot (oracle) | 1.00 | 80 | 20 | 10 |" in text and "**Oracle**: cot (gold_first)" in text


def test_tables_follow_the_given_order(tmp_path):
    run = RunDir(tmp_path)
    for label in ("cot", "standard"):
        write_json(run.eval_metrics(label), _metrics(label, 1, 0.1, 1))
    text = write_report(run, order=["standard", "cot"]).read_text()
    assert text.index("| standard | 1 |") < text.index("| cot | 1 |")


def test_report_shows_what_the_rationale_filter_kept_and_how_faithful(tmp_path):
    run = RunDir(tmp_path)
    block = {"rows": 10, "kept": 3, "kept_ratio": 0.3, "faithful_ratio": 0.4, "kept_faithful_ratio": 1.0,
             "reasons": {"unfaithful": 2, "wrong_answer": 5}}
    write_json(run.rationale_stats, dict(block, datasets={"hotpotqa": block}))
    text = write_report(run).read_text()
    assert "| all | 10 | 5 | 3 (30%) | 40% | 100% | unfaithful 2, wrong_answer 5 |" in text
    assert "| hotpotqa | 10 | 5 | 3 (30%) |" in text
