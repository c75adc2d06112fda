"""Parquet shard folders (``RUN/rationales/``): the one reader and the one writer of a shard.

Rationale generation writes its rows as numbered shards, rewrites them when the filter
changes, and distillation, resume and the stats read them back. Each of those used to open
the files its own way; one reader and one writer keep the rules in one place:

- a shard is written under a temporary name, flushed to disk (fsync) and renamed, so a
  killed run leaves whole shards or nothing, also after a machine crash;
- only files named as :meth:`RunDir.shard` names them count: the temporary file of a killed
  run is never read;
- a reader asks for the columns it needs, and a shard that lacks one it cannot do without
  is refused by name (a foreign parquet file dropped into the folder).

pyarrow is imported in the functions: the CLI imports the run directory without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from lmcot.runs.rundir import RunDir

if TYPE_CHECKING:
    import pyarrow as pa


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
    tmp = path.parent / f".{path.name}.tmp"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path
