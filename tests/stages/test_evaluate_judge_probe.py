"""The evaluation stage probes the judge with the gold-rationale row, in process (no cluster): the
tiny preset's models, 2 + 2 questions, the file written through lmcot.runs."""

from lmcot.config import load_config
from lmcot.evaluation.judge_probe import JUDGE_CORRUPTION
from lmcot.runs.evals import read_aspects, read_judge_separation
from lmcot.runs.rundir import RunDir
from lmcot.stages import evaluate


def test_the_judged_gold_row_records_the_judges_separation(tmp_path):
    run_dir = RunDir(tmp_path)
    evaluate.run(load_config("tiny", ["eval.limit=2", "eval.method=gold_rationale"]), run_dir, judge_aspects=True)
    folder = run_dir.eval_dir("gold_rationale")
    rec, means = read_judge_separation(folder), read_aspects(folder)
    assert rec is not None and rec["questions"] == 4 and list(rec["aspects"]) == list(means)
    for aspect, s in rec["aspects"].items():
        assert s["corruption"] == JUDGE_CORRUPTION[aspect] and s["n"] + s["skipped"] == 4
        if s["n"]:
            assert len(s["gold_scores"]) == len(s["corrupted_scores"]) == s["n"] and 0 <= s["auc"] <= 1
            assert s["example"]["gold"] != s["example"]["corrupted"]
    # the gold scores are those the row's own judging gave: where nothing was skipped, their mean is the table's
    full = [a for a, s in rec["aspects"].items() if s["n"] == 4]
    assert full and all(abs(rec["aspects"][a]["gold"] - means[a]) < 1e-6 for a in full)
