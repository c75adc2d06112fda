"""The skip rule (lmcot.runs.step): a step is done only with the identity it recorded.

That ``lmcot run`` writes each record once (the step's own) and then skips every step is checked
with the pipeline's stages stubbed in test_cli.py."""

import json

from lmcot.runs import step
from lmcot.runs.rundir import RunDir


def test_a_step_is_done_only_with_the_identity_it_recorded(tmp_path):
    folder = tmp_path / "distill"
    assert step.done(folder, "abc") is None
    step.record(folder, "distill", "abc", {"steps": 3})
    assert step.done(folder, "abc") == {"steps": 3}
    assert step.done(folder, "abd") is None
    record = json.loads(RunDir.step_record(folder).read_text())
    assert (record["stage"], record["identity"], record["summary"]) == ("distill", "abc", {"steps": 3})
    assert record["finished_at"]
    RunDir.step_record(folder).write_text("{broken")
    assert step.done(folder, "abc") is None


def test_a_step_recorded_without_a_summary_is_done(tmp_path):
    step.record(tmp_path, "rationales", "x")
    assert step.done(tmp_path, "x") == {}

