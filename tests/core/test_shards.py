"""Shard folders (lmcot.runs.shards): the one reader and the one writer, on a small schema of their own.

The rationale rows, their key and their manifest are tested with the teacher (test_teacher.py).
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmcot.runs.rundir import RunDir
from lmcot.runs.shards import (ShardError, ShardStore, next_shard_index, read_keys, read_shards, shard_paths,
                               write_shard)

SCHEMA = pa.schema([("name", pa.string()), ("n", pa.int64()), ("value", pa.float64())])
KEY = ("name", "n")


def store(root, **kw) -> ShardStore:
    return ShardStore(root, schema=SCHEMA, key_columns=KEY, command="test-writer", **kw)


def rows(*keys) -> list[dict]:
    return [{"name": name, "n": n, "value": 0.5} for name, n in keys]


def test_the_store_writes_whole_shards_and_each_key_once(tmp_path):
    with store(tmp_path, shard_rows=3) as s:
        assert s.add(rows(*((k, 0) for k in "abcde"))) == 5
        assert len(shard_paths(tmp_path)) == 1  # 3 rows written, 2 buffered
        # on disk, buffered, new, and new twice in one call
        assert s.add(rows(("a", 0), ("e", 0), ("e", 1), ("e", 1))) == 1
        s.flush()
        assert (s.new_rows, s.new_shards) == (6, 2)
    assert [p.name for p in shard_paths(tmp_path)] == ["part-000000.parquet", "part-000001.parquet"]
    assert read_keys(tmp_path, KEY) == {(k, 0) for k in "abcde"} | {("e", 1)}
    assert pq.read_schema(shard_paths(tmp_path)[0]).remove_metadata() == SCHEMA


def test_a_rerun_resumes_from_the_rows_written(tmp_path):
    with store(tmp_path, shard_rows=2) as s:  # killed with "c" still buffered
        s.add(rows(("a", 0), ("b", 0), ("c", 0)))
    with store(tmp_path, shard_rows=2) as s:
        assert s.written == {("a", 0), ("b", 0)}
        assert s.add(rows(("a", 0), ("b", 0), ("c", 0))) == 1
        s.flush()
        assert (s.new_rows, s.new_shards) == (1, 1)
    assert read_keys(tmp_path, KEY) == {("a", 0), ("b", 0), ("c", 0)} and next_shard_index(tmp_path) == 2


def test_a_killed_writers_temporary_shard_is_never_read_and_the_next_writer_removes_it(tmp_path):
    with store(tmp_path, shard_rows=1) as s:
        s.add(rows(("a", 0)))
    half = RunDir.shard_temporary(RunDir.shard(tmp_path, 1))
    half.write_bytes(b"PAR1 half a file")
    notes = tmp_path / ".notes.tmp"
    notes.write_text("not a shard")
    assert read_keys(tmp_path, KEY) == {("a", 0)} and next_shard_index(tmp_path) == 1
    with store(tmp_path, shard_rows=1) as s:
        assert not half.exists() and notes.exists(), "only a shard's temporary file is removed"
        s.add(rows(("b", 0)))
    assert [p.name for p in shard_paths(tmp_path)] == ["part-000000.parquet", "part-000001.parquet"]


def test_a_shard_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    path = RunDir.shard(tmp_path, 0)
    write_shard(path, pa.table({"name": ["a"]}))
    write_shard(path, pa.table({"name": ["b"]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-000000.parquet"]

    def dies_halfway(table, where):
        where.write_bytes(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        write_shard(path, pa.table({"name": ["c"]}))
    monkeypatch.undo()
    assert RunDir.shard_temporary(path).exists()
    assert read_shards(tmp_path).to_pylist() == [{"name": "b"}], "the old shard is whole, the half one unread"


def test_one_writer_at_a_time(tmp_path):
    with store(tmp_path):
        with pytest.raises(RuntimeError, match="being written by another test-writer run"):
            with store(tmp_path):
                pass
    with store(tmp_path):  # released on exit (and by the OS when a run is killed)
        pass


def test_the_manifest_refuses_rows_written_with_other_settings(tmp_path):
    with store(tmp_path, shard_rows=1) as s:
        s.check_manifest({"teacher": "big", "temperature": 0.7})
        s.add(rows(("a", 0)))
    with store(tmp_path) as s:
        s.check_manifest({"teacher": "big", "temperature": 0.7})  # the same settings: resumes
        with pytest.raises(ValueError, match=r"temperature: 0.7 -> 0.0\).*--run-dir"):
            s.check_manifest({"teacher": "big", "temperature": 0.0})
    assert json.loads(RunDir.shard_manifest(tmp_path).read_text()) == {"teacher": "big", "temperature": 0.7}

    empty = tmp_path / "empty"  # no row on disk: new settings replace the old ones
    with store(empty) as s:
        s.check_manifest({"teacher": "big"})
    with store(empty) as s:
        s.check_manifest({"teacher": "small"})
    assert json.loads(RunDir.shard_manifest(empty).read_text()) == {"teacher": "small"}


def test_the_reader_takes_the_columns_each_shard_has_and_refuses_one_lacking_a_required_one(tmp_path):
    write_shard(RunDir.shard(tmp_path, 0), pa.table({"name": ["a"], "n": [0]}))
    write_shard(RunDir.shard(tmp_path, 1), pa.table({"name": ["b"], "n": [1], "value": [1.5]}))
    (tmp_path / "other.parquet").write_bytes(b"not read")
    assert read_shards(tmp_path, ["name", "value"]).to_pylist() == [{"name": "a", "value": None},
                                                                    {"name": "b", "value": 1.5}]
    with pytest.raises(ShardError, match=r"part-000000.parquet lacks the columns \['value'\]"):
        read_shards(tmp_path, ["name"], required=["value"])
    with pytest.raises(ShardError):
        read_keys(tmp_path, ("name", "value"))
    assert read_shards(tmp_path / "none", ["name", "nope"], empty=SCHEMA).column_names == ["name"]
    assert read_shards(tmp_path / "none").num_rows == 0 and read_keys(tmp_path / "none", KEY) == set()
