"""Shared test set-up: offline, tiny models in one cache, one Ray session per module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LMCOT_TINY_DIR", str(ROOT / "artifacts" / "tiny-models"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / "artifacts" / "torch-extensions"))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests run where a CUDA GPU is visible and are skipped (with the reason) elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU Ray cluster for one test module, shut down afterwards."""
    import ray

    from lmcot.stages.cluster import ensure_ray

    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def load_script():
    """Import a script of ``tools/`` or ``bench/`` by its path (they are not a package)."""
    import importlib.util
    import sys

    def load(relative: str):
        path = ROOT / relative
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # dataclasses and pickling look the module up by name
        spec.loader.exec_module(module)
        return module

    return load

