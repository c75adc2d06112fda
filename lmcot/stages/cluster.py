"""Connecting to Ray: an existing cluster when there is one, else a small local one.

``ray job submit`` and KubeRay set ``RAY_ADDRESS``; a laptop run without it starts a
local cluster on loopback sized to the machine, so every stage works both ways.
"""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)


def ensure_ray(num_cpus: int | None = None) -> None:
    """Initialise Ray once per process (no-op when already connected)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if os.environ.get("RAY_ADDRESS"):
        # A submitted job (or KubeRay) already carries its runtime env; workers inherit the
        # cluster's environment, and a second runtime env would clash with the job's.
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        env_vars = {k: v for k, v in os.environ.items()
                    if k.startswith(("LMCOT_", "HF_", "TRANSFORMERS_", "TORCH_EXTENSIONS_DIR", "TOKENIZERS_"))}
        runtime_env = {"env_vars": env_vars} if env_vars else None
        # address="local": always a fresh cluster here, never one a `ray start` left behind.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
                 object_store_memory=256 * 1024 * 1024)


def add_resources(*needs: dict[str, float], times: int = 1) -> dict[str, float]:
    """The sum of several Ray resource requests, ``times`` over.

    >>> add_resources({"CPU": 1, "GPU": 1}, {"CPU": 0.5, "large_lm": 0.001}, times=2)
    {'CPU': 3.0, 'GPU': 2, 'large_lm': 0.002}
    """
    total: dict[str, float] = {}
    for need in needs:
        for key, amount in need.items():
            total[key] = total.get(key, 0) + amount
    return {key: times * amount for key, amount in total.items()}


def require_resources(need: dict[str, float], what: str, fix: str) -> None:
    """Fail before anything starts when ``need`` (Ray resource -> amount) cannot fit the cluster.

    On a local cluster that is an error saying ``what`` needs it and ending in ``fix`` (the
    config fields to change); on a remote one (``RAY_ADDRESS`` set) only a warning, since an
    autoscaler may still add nodes.
    """
    have = ray.cluster_resources()
    short = {k: v for k, v in need.items() if v > 0 and have.get(k, 0.0) < v}
    if not short:
        return
    has = ", ".join(f"{have.get(k, 0.0):g} {k}" for k in short)
    wants = ", ".join(f"{v:g} {k}" for k, v in short.items())
    msg = f"{what}; that needs {wants} but the Ray cluster has {has}"
    if os.environ.get("RAY_ADDRESS"):
        log.warning("%s; waiting for the cluster to grow", msg)
        return
    raise ValueError(f"{msg}: {fix}")
