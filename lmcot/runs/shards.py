"""Parquet shard folders (``RUN/rationales/``): the one reader and the one writer of shards.

Rationale generation writes its rows as numbered shards, rewrites them when the filter
changes, and distillation, resume and the stats read them back; one reader and one writer
keep the rules in one place:

- a shard is written under a temporary name (:meth:`RunDir.shard_temporary`), flushed to disk
  (fsync) and renamed, so a killed run leaves whole shards or nothing, also after a machine crash;
- only files named as :meth:`RunDir.shard` names them count: the temporary file of a killed
  run is never read, and the next writer removes it;
- a reader asks for the columns it needs, and a shard that lacks one it cannot do without
  is refused by name (a foreign parquet file dropped into the folder);
- :class:`ShardStore`, the writer of a whole folder, holds a lock (one writer at a time), writes
  each row key once (a rerun resumes from the keys on disk) and keeps a manifest: the settings
  every row shares, which a rerun with other settings may not add to.

What a row is (its schema, its key columns, its manifest) is the caller's: the store knows
shards, not rationales. pyarrow is imported in the functions: the CLI imports the run
directory without it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from lmcot.runs.rundir import RunDir, write_json

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


class ShardError(ValueError):
    """A file in a shard folder that is not a shard of the kind asked for."""


def shard_paths(folder: Path) -> list[Path]:
    """The finished shards of ``folder``, in write order (none for a missing folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if RunDir.shard_index(p) is not None), key=RunDir.shard_index)


def next_shard_index(folder: Path) -> int:
    """One past the highest shard number present (0 for an empty folder)."""
    return max((RunDir.shard_index(p) for p in shard_paths(folder)), default=-1) + 1


def read_shard(path: Path, columns: Sequence[str] | None = None, required: Iterable[str] = ()) -> "pa.Table":
    """One shard: ``columns`` that it has (all when None); :class:`ShardError` when it lacks a ``required`` one."""
    import pyarrow.parquet as pq

    present = pq.read_schema(path).names
    missing = sorted(set(required) - set(present))
    if missing:
        raise ShardError(f"{path} lacks the columns {missing}: it is not a rationale shard")
    return pq.read_table(path, columns=None if columns is None else [c for c in columns if c in present])


def read_shards(folder: Path, columns: Sequence[str] | None = None, required: Iterable[str] = (),
                empty: "pa.Schema | None" = None) -> "pa.Table":
    """Every shard of ``folder`` as one table (see :func:`read_shard`); with no shard, ``empty``'s
    columns (among ``columns``) and no rows."""
    import pyarrow as pa

    tables = [read_shard(p, columns, required) for p in shard_paths(folder)]
    if not tables:
        schema = empty if empty is not None else pa.schema([])
        table = schema.empty_table()
        return table if columns is None else table.select([c for c in columns if c in schema.names])
    return pa.concat_tables(tables, promote_options="default")


def write_shard(path: Path, table: "pa.Table") -> Path:
    """Write (or replace) one shard atomically and durably: temporary name, fsync, rename."""
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = RunDir.shard_temporary(path)
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def read_keys(folder: Path, columns: Sequence[str]) -> set[tuple]:
    """The keys (tuples of ``columns``, which every shard must have) of every row of ``folder``."""
    keys: set[tuple] = set()
    for path in shard_paths(folder):
        table = read_shard(path, columns, required=columns)
        keys.update(zip(*(table[c].to_pylist() for c in columns)))
    return keys


class ShardStore:
    """The one writer of a shard folder: a lock, whole shards, each row key once, a manifest.

    Use as a context manager (``with ShardStore(...) as store:``): entering takes the lock
    (:meth:`RunDir.writer_lock`; the OS releases it when a run is killed), removes temporary
    shards a killed run left and reads the keys already written (:attr:`written`). :meth:`add`
    buffers rows whose key is new and writes a shard every ``shard_rows`` rows; :meth:`flush`
    writes the rest. A killed run loses at most the rows it had not flushed; a rerun writes
    exactly those.
    """

    def __init__(self, root: Path, *, schema: "pa.Schema", key_columns: Sequence[str], shard_rows: int = 512,
                 expected: int = 0, command: str = "lmcot"):
        self.root = Path(root)
        self.schema = schema
        """Every shard's columns, in order (rows are converted with it)."""
        self.key_columns = tuple(key_columns)
        """The columns that name a row: a key is written once."""
        self.shard_rows = shard_rows
        self.expected = expected
        """Rows a complete folder holds, for the progress line logged per shard (0: unknown)."""
        self.command = command
        """The command that writes the folder, named when a second one finds it locked."""
        self.written: set[tuple] = set()
        self.new_rows = 0
        self.new_shards = 0
        self._buffer: list[dict] = []
        self._lock = None

    def key(self, row: dict) -> tuple:
        return tuple(row[c] for c in self.key_columns)

    # lifecycle
    def __enter__(self) -> "ShardStore":
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(RunDir.writer_lock(self.root), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise RuntimeError(f"{self.root} is being written by another {self.command} run; "
                               "wait for it to finish or use another --run-dir") from None
        for path in self.root.iterdir():
            if RunDir.is_shard_temporary(path):
                path.unlink()  # a shard a killed run never finished: its rows are written again
        self.written = read_keys(self.root, self.key_columns)
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def check_manifest(self, manifest: dict) -> None:
        """Refuse to add rows written with other settings to the rows on disk; record ``manifest``."""
        path = RunDir.shard_manifest(self.root)
        if path.is_file() and self.written:
            old = json.loads(path.read_text())
            diff = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
            if diff:
                changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                raise ValueError(f"{self.root} holds rows written with other settings ({changes}); "
                                 "use a new --run-dir, or delete that directory to regenerate")
        write_json(path, manifest)

    # writing
    def add(self, rows: Iterable[dict]) -> int:
        """Buffer the rows whose key is not written yet; write full shards. Returns the rows accepted."""
        accepted = 0
        pending = {self.key(r) for r in self._buffer}
        for row in rows:
            key = self.key(row)
            if key in self.written or key in pending:
                continue
            pending.add(key)
            self._buffer.append(row)
            accepted += 1
        while len(self._buffer) >= self.shard_rows:
            self._write(self._buffer[: self.shard_rows])
            self._buffer = self._buffer[self.shard_rows:]
        return accepted

    def flush(self) -> None:
        """Write the buffered rows as a last, possibly short, shard."""
        if self._buffer:
            self._write(self._buffer)
            self._buffer = []

    def _write(self, rows: list[dict]) -> Path:
        import pyarrow as pa

        final = write_shard(RunDir.shard(self.root, next_shard_index(self.root)),
                            pa.Table.from_pylist(rows, schema=self.schema))
        self.written.update(self.key(r) for r in rows)
        self.new_rows += len(rows)
        self.new_shards += 1
        total = f"{len(self.written)}/{self.expected}" if self.expected else str(len(self.written))
        log.info("%s: wrote %s (%d rows; %s rows written)", self.root.name, final.name, len(rows), total)
        return final
