"""The Claims table, F1 intervals and `lmcot compare`, on evaluation folders written by the evaluator itself.

Each evaluation here is written by :func:`lmcot.evaluation.evaluator.write_outputs` from scripted
answers on known questions, so the per-question scores, the paired intervals and the verdicts that
follow them are checked against differences built in on purpose (clearly better, the same, worse).
"""

import json
import subprocess
import sys

import pytest

from lmcot.config import EvalConfig
from lmcot.datasets.data import Example, Paragraph
from lmcot.evaluation.claims import claim_rows
from lmcot.evaluation.evaluator import summarize, write_outputs
from lmcot.evaluation.report import write_report
from lmcot.evaluation.statistics import HOLDS, NOISE, REVERSED
from lmcot.inference.method import MethodResult
from lmcot.runs.rundir import RunDir

N = 120
EXAMPLES = [Example(f"q{i}", f"Who was born first, Al{i} or Bo{i}?" if i % 2 else f"Where is X{i}?",
                    f"Al{i}" if i % 2 else f"Town{i}", (Paragraph("T", ("s",)),), (("T", 0),), "comparison", "hotpotqa")
            for i in range(N)]


def _answers(right: int) -> list[MethodResult]:
    """The first ``right`` questions answered right, the rest wrong (k samples: right, wrong, right)."""
    out = []
    for i, ex in enumerate(EXAMPLES):
        a = ex.answer if i < right else "nobody"
        out.append(MethodResult(ex.id, a, {a: 1}, ["r"], [ex.answer, "nobody", a]))
    return out


def _write(run: RunDir, label: str, right: int) -> None:
    results = _answers(right)
    write_outputs(run, EvalConfig(label=label), {"hotpotqa": (results, summarize(EXAMPLES, results))})


@pytest.fixture
def run(tmp_path):
    run = RunDir(tmp_path)
    for label, right in (("empty-rationale", 30), ("gold-rationale", 100), ("standard", 60), ("cot", 90),
                         ("lm_guided-distilled", 60), ("lm_guided-refined", 61), ("lm_guided-refined-sc5", 61)):
        _write(run, label, right)
    return run


def test_details_carry_per_question_scores_and_the_metrics_do_not(run):
    line = json.loads(run.eval_details("standard").read_text().splitlines()[1])
    assert line["f1"] == 1.0 and line["binary"] is True and line["sample_f1"] == [1.0, 0.0, 1.0]
    assert "questions" not in json.loads(run.eval_metrics("standard").read_text())["datasets"]["hotpotqa"]


def test_each_claims_verdict_follows_its_interval(run):
    from lmcot.runs.evals import read_details

    details = {label: read_details(run.eval_dir(label)) for label in run.eval_labels()}
    verdicts = {c.name: cells["all"].verdict for c, cells in claim_rows(details)}
    assert verdicts == {
        "the large LM reads rationales: gold chain of thought > empty rationale": HOLDS,
        "the small LM's rationale helps: LM-guided (refined) > empty rationale": HOLDS,
        "the distilled small LM's rationale helps: LM-guided (distilled) > empty rationale": HOLDS,
        "LM-guided CoT (refined) > standard prompting": NOISE,
        "LM-guided CoT (refined) > the large LM's own CoT": REVERSED,
        "refinement helps: LM-guided refined > distilled": NOISE,
        "self-consistency helps: refined, k samples voted > one greedy rationale": NOISE}
    gold = next(cells for c, cells in claim_rows(details) if c.better == "gold-rationale")
    assert (gold["all"].n, gold["all"].wins, gold["all"].losses) == (N, 70, 0)
    assert gold["binary"].n == gold["open"].n == N // 2


def test_report_shows_claims_intervals_and_what_a_vote_can_reach(run):
    text = write_report(run).read_text()
    assert ("| the large LM reads rationales: gold chain of thought > empty rationale | `gold-rationale` vs "
            "`empty-rationale` | 120 | +58.3 [") in text
    assert "| **holds** |" in text and "| **reversed** |" in text and "| **not distinguishable from noise** |" in text
    assert "| lm_guided-refined-sc5 | 3 | " in text, "per-sample and best-of-k beside the vote"
    assert "hotpotqa binary F1 (n)" in text


def test_lmcot_compare_reads_details_or_scores_predictions_against_gold(run, tmp_path):
    a, b = run.eval_dir("empty-rationale"), run.eval_dir("gold-rationale")
    done = subprocess.run([sys.executable, "-m", "lmcot.cli", "compare", str(a), str(b), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["all"]["verdict"] == HOLDS and result["all"]["wins"] == 70
    gold = tmp_path / "gold.json"
    gold.write_text(json.dumps([{"_id": e.id, "question": e.question, "answer": e.answer, "type": "comparison",
                                 "level": "hard", "supporting_facts": [["T", 0]], "context": [["T", ["s"]]]}
                                for e in EXAMPLES]))
    done = subprocess.run([sys.executable, "-m", "lmcot.cli", "compare", str(b / "predictions.json"), str(a),
                           "--gold", str(gold)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("all: B - A = -58.3 [") and "reversed" in done.stdout
    missing = subprocess.run([sys.executable, "-m", "lmcot.cli", "compare", str(tmp_path), str(a)],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no details.jsonl" in missing.stderr
