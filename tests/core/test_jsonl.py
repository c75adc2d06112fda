"""JSON Lines run files (lmcot.runs.jsonl): training logs written whole or live, and cut back on resume."""

from lmcot.runs.jsonl import append_jsonl, load_jsonl, truncate_jsonl, write_jsonl


def test_a_resumed_log_drops_the_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / "refine" / "log.jsonl"  # the folder does not exist yet
    for step in (1, 2, 3):
        append_jsonl(path, {"step": step, "reward": step / 10})
    truncate_jsonl(path, 2)
    append_jsonl(path, {"step": 3, "reward": 0.5})
    assert [(e["step"], e["reward"]) for e in load_jsonl(path)] == [(1, 0.1), (2, 0.2), (3, 0.5)]
    write_jsonl(path, [])
    assert load_jsonl(path) == [] and path.read_text() == ""


def test_a_missing_log_reads_empty_and_is_not_created_by_a_cut(tmp_path):
    missing = tmp_path / "missing.jsonl"
    assert load_jsonl(missing) == []
    truncate_jsonl(missing, 3)
    assert not missing.exists()


def test_lines_are_objects_with_sorted_keys_unless_asked_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "log.jsonl"
    write_jsonl(path, [{"b": 1, "a": 2}, {"step": 2}])
    assert path.read_text() == '{"a": 2, "b": 1}\n{"step": 2}\n'
    path.write_text(path.read_text() + "\n   \n" + '{"step": 3}\n')
    assert load_jsonl(path) == [{"a": 2, "b": 1}, {"step": 2}, {"step": 3}]
    write_jsonl(path, iter([{"b": 1, "a": 2}]), sort_keys=False)
    assert path.read_text() == '{"b": 1, "a": 2}\n'
    append_jsonl(path, {"z": 0, "y": 1})
    assert path.read_text().splitlines()[-1] == '{"y": 1, "z": 0}'
