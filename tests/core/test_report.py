"""Stage manifests and the paper-style report, from run-directory files alone."""

import json

from lmcot.manifest import chain_hash, is_fresh, write_manifest
from lmcot.report import write_report
from lmcot.rundir import RunDir, write_json


def test_manifest_freshness(tmp_path):
    out = tmp_path / "distill"
    h = chain_hash("distill", "abc")
    assert not is_fresh(out, h)
    write_manifest(out, "distill", h, {"steps": 3})
    assert is_fresh(out, h)
    assert not is_fresh(out, chain_hash("distill", "abd"))
    (out / "lmcot-manifest.json").write_text("{broken")
    assert not is_fresh(out, h)


def _metrics(label, k, f1, tokens):
    ds = {"em": f1 / 2, "f1": f1, "prec": f1, "recall": f1, "n": 4, "missing": 0,
          "large_calls_per_question": k, "large_tokens_per_question": tokens,
          "small_calls_per_question": 1, "small_tokens_per_question": 10}
    return {"method": label.split("-")[0], "self_consistency": k, "label": label,
            "datasets": {"hotpotqa": ds, "2wiki": ds}}


def test_report_tables_plots_and_finding(tmp_path):
    run = RunDir(tmp_path)
    for label, k, f1, tokens in (("standard", 1, 0.2, 300), ("lm_guided-distilled", 1, 0.3, 320),
                                 ("lm_guided-refined", 1, 0.4, 330), ("lm_guided-refined-sc5", 5, 0.5, 1600)):
        write_json(run.eval_dir(label) / "metrics.json", _metrics(label, k, f1, tokens))
    aspects = {a: 0.5 for a in ("factuality", "relevance")}
    write_json(run.eval_dir("lm_guided-distilled") / "aspects.json", aspects)
    write_json(run.eval_dir("lm_guided-refined") / "aspects.json", {a: 0.7 for a in aspects})
    run.refine.mkdir(parents=True)
    run.refine_metrics.write_text("\n".join(json.dumps({"step": i, "reward": i / 10, "loss": 1 - i / 10, "kl": 0.01 * i})
                                            for i in range(5)))
    text = write_report(run).read_text()
    assert "| lm_guided-refined-sc5 | 5 | 25.0 | 50.0 | 25.0 | 50.0 |" in text
    assert "| lm_guided-refined | 0.700 | 0.700 |" in text
    assert "| standard | 1.00 | 300 | 10 |" in text
    assert "moved together" in text
    for png in ("accuracy", "cost", "aspects", "curves"):
        assert (tmp_path / "report" / f"{png}.png").stat().st_size > 1000


def test_finding_reports_quality_and_accuracy_moving_apart(tmp_path):
    run = RunDir(tmp_path)
    write_json(run.eval_dir("lm_guided-distilled") / "metrics.json", _metrics("lm_guided-distilled", 1, 0.4, 1))
    write_json(run.eval_dir("lm_guided-refined") / "metrics.json", _metrics("lm_guided-refined", 1, 0.3, 1))
    write_json(run.eval_dir("lm_guided-distilled") / "aspects.json", {"fluency": 0.2})
    write_json(run.eval_dir("lm_guided-refined") / "aspects.json", {"fluency": 0.9})
    assert "moved apart (in opposite directions)" in write_report(run).read_text()


def test_tables_follow_the_given_order(tmp_path):
    run = RunDir(tmp_path)
    for label in ("cot", "standard"):
        write_json(run.eval_dir(label) / "metrics.json", _metrics(label, 1, 0.1, 1))
    text = write_report(run, order=["standard", "cot"]).read_text()
    assert text.index("| standard | 1 |") < text.index("| cot | 1 |")
