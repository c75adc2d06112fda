"""Stage manifests: what a finished stage wrote, and from which config.

The pipeline skips a stage whose manifest carries the hash it would compute now, and
reruns it (and everything downstream, whose hashes chain through it) when the config
sections the stage reads have changed. A stage that died never wrote its manifest, so
it runs again and resumes from its own checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from lmcot.rundir import write_json

MANIFEST = "lmcot-manifest.json"


def chain_hash(*parts: object) -> str:
    """A short stable hash of config hashes and upstream stage hashes.

    >>> chain_hash("a", 1) == chain_hash("a", 1) != chain_hash("a", 2)
    True
    """
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_manifest(out_dir: Path) -> dict | None:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def is_fresh(out_dir: Path, config_hash: str) -> bool:
    """True when ``out_dir`` holds a finished stage made from the same config hash."""
    manifest = read_manifest(out_dir)
    return manifest is not None and manifest.get("config_hash") == config_hash


def write_manifest(out_dir: Path, stage: str, config_hash: str, summary: dict | None = None) -> None:
    write_json(Path(out_dir) / MANIFEST, {
        "stage": stage,
        "config_hash": config_hash,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "summary": summary or {},
    })
