"""The ``lmcot`` command end to end: eval on the tiny preset, score, and bad input."""

import json
import subprocess
import sys

import pytest

from lmcot.cli import main
from lmcot.datasets.data import load_json_file, resolve_path, to_official_json


def _lmcot(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lmcot.cli", *args], capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("method, k", [("lm_guided", 1), ("standard", 1), ("cot", 3)])
def test_eval_writes_official_predictions_and_metrics(tmp_path, method, k):
    run = tmp_path / "run"
    code = main(["eval", "--config", "tiny", "--run-dir", str(run), "--method", method,
                 "--self-consistency", str(k), "--limit", "3"])
    assert code == 0
    label = method + (f"-sc{k}" if k > 1 else "")
    out = run / "eval" / label
    predictions = json.loads((out / "predictions.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["datasets"]) == {"hotpotqa", "2wiki"}
    assert len(predictions["answer"]) == 6  # 3 per dataset
    for m in metrics["datasets"].values():
        assert m["n"] == 3 and 0.0 <= m["f1"] <= 1.0
        assert m["large_calls_per_question"] == (k if method == "lm_guided" else 1)
        assert m["small_calls_per_question"] == (1 if method == "lm_guided" else 0)
    details = [json.loads(line) for line in (out / "details.jsonl").read_text().splitlines()]
    assert all(len(d["answers"]) == k for d in details)
    assert "| hotpotqa | 3 |" in (out / "report.md").read_text()
    assert (run / "config.yaml").is_file()


def test_score_cli_matches_hand_computed_metrics(tmp_path):
    examples = load_json_file(resolve_path("sample:hotpotqa_synthetic_dev"), "hotpotqa")[:4]
    gold = tmp_path / "gold.json"
    gold.write_text(json.dumps(to_official_json(examples)))
    preds = {examples[0].id: examples[0].answer, examples[1].id: "completely wrong words"}
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"answer": preds, "sp": {}}))
    out = _lmcot("score", "--gold", str(gold), "--predictions", str(pred))
    assert out.returncode == 0, out.stderr
    scores = json.loads(out.stdout)
    assert set(scores) >= {"em", "f1", "prec", "recall"}
    assert scores["em"] == pytest.approx(0.25)  # one right of four, two missing count 0


def test_bad_override_fails_cleanly_without_traceback(tmp_path):
    out = _lmcot("eval", "--run-dir", str(tmp_path), "--set", "eval.limt=2")
    assert out.returncode == 2
    assert "did you mean 'eval.limit'" in out.stderr and "Traceback" not in out.stderr


def test_malformed_dataset_names_file_record_and_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"_id": "r1", "question": "q?", "answer": "a", "supporting_facts": [],
                                "context": [], "type": "bridge", "level": "easy"}]))
    out = _lmcot("eval", "--run-dir", str(tmp_path / "run"), "--set",
                 f"data.datasets=[{{name: x, format: hotpotqa, dev_path: {bad}}}]")
    assert out.returncode == 2, out.stderr
    assert "bad.json" in out.stderr and "r1" in out.stderr and "context" in out.stderr
    assert "Traceback" not in out.stderr
