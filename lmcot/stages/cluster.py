"""Connecting to Ray (an existing cluster when there is one, else a small local one) and
checking a resource plan of :mod:`lmcot.planning.resources` against it.

``ray job submit`` and KubeRay set ``RAY_ADDRESS``; a laptop run without it starts a
local cluster on loopback sized to the machine, so every stage works both ways.

The local cluster runs without the dashboard, which would cost about 1 GB more on a small
machine, and with it goes Ray's state API. Ray Train's ``PlacementGroupCleaner`` (a detached
actor that removes a training run's placement group should its controller die) asks the state
API once a second whether the controller lives, and without one it logs "Failed to query Ray
Train Controller actor state" every time: hundreds of lines on the console of a training run.
On a local cluster that check has nothing to protect (the cluster ends with its driver, and
the placement groups with it), so :func:`quiet_worker_logs` runs in every worker of the local
cluster and raises that one logger to ERROR. A remote cluster (KubeRay) runs the dashboard;
there the check works and its logs are left as they are.
"""

from __future__ import annotations

import logging
import os

import ray

from lmcot.planning.resources import Need, short_of

log = logging.getLogger(__name__)


FORWARDED_ENV = ("LMCOT_", "HF_", "TRANSFORMERS_", "TORCH_EXTENSIONS_DIR", "TOKENIZERS_")
"""Prefixes of the driver's environment variables that Ray workers and actors get too."""
QUIETED_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)
"""Loggers of Ray's own workers raised to ERROR on the local cluster (see the module doc)."""


def quiet_worker_logs() -> None:
    """The local cluster's ``worker_process_setup_hook``: what it runs in each new worker process."""
    for name in QUIETED_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def forwarded_env() -> dict[str, str]:
    """The driver's lmcot/HF/DeepSpeed environment variables, handed to local Ray workers."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


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
        env_vars = forwarded_env()
        runtime_env = {"worker_process_setup_hook": f"{__name__}.quiet_worker_logs",
                       **({"env_vars": env_vars} if env_vars else {})}
        # address="local": always a fresh cluster here, never one a `ray start` left behind.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
                 object_store_memory=256 * 1024 * 1024)


def require_resources(need: Need) -> None:
    """Fail before anything starts when ``need`` (see :mod:`lmcot.planning.resources`) cannot fit the cluster.

    On a local cluster that is an error saying what needs it and ending in the fields to
    change; on a remote one (``RAY_ADDRESS`` set) only a warning, since an autoscaler may
    still add nodes.
    """
    have = ray.cluster_resources()
    short = short_of(need.resources, have)
    if not short:
        return
    has = ", ".join(f"{have.get(k, 0.0):g} {k}" for k in short)
    wants = ", ".join(f"{v:g} {k}" for k, v in short.items())
    msg = f"{need.what}; that needs {wants} but the Ray cluster has {has}"
    if os.environ.get("RAY_ADDRESS"):
        log.warning("%s; waiting for the cluster to grow", msg)
        return
    raise ValueError(f"{msg}: {need.fix}")
