"""Liveness and readiness of the serve graph, for load balancers and monitors.

``/healthz`` is liveness: it answers ok whenever the ingress answers at all, whatever the models
are doing, so a restart is never triggered by a model that is still loading. ``/readyz`` is
readiness: ready once every deployment of the application (the ingress and both model
deployments) has a running replica, so a request sent now can be served. It reports each
deployment's Serve status and replica counts, 200 when ready and 503 in the one error shape
otherwise (the message names each deployment's state). What it leaves out: whether a replica is
busy (a full queue is answered 503 by that request) and the health of any other application.
This module turns Serve's status into that answer; the ingress reads the status from Serve.
"""

from __future__ import annotations

RUNNING = "RUNNING"


def _name(state) -> str:
    return str(getattr(state, "value", state))


def deployment_report(status, replica_states: dict) -> dict:
    """One deployment's status (``HEALTHY``, ``UPDATING``...) and its replica count per state.

    >>> deployment_report("UPDATING", {"STARTING": 1})
    {'status': 'UPDATING', 'replicas': {'STARTING': 1}, 'ready': False}
    """
    replicas = {_name(k): int(v) for k, v in replica_states.items()}
    return {"status": _name(status), "replicas": replicas, "ready": replicas.get(RUNNING, 0) > 0}


def readiness(deployments: dict[str, tuple[object, dict]]) -> tuple[bool, dict, str]:
    """(ready, report, message) for ``{name: (status, replica_states)}`` of the application's deployments.

    Ready when there is at least one deployment and each has a running replica; the message says
    which are not, and why.

    >>> ready, report, message = readiness({"Ingress": ("HEALTHY", {"RUNNING": 1}),
    ...                                     "Answerer": ("UPDATING", {"STARTING": 1})})
    >>> ready, report["status"], message
    (False, 'not ready', 'not ready: Answerer has no running replica (UPDATING; STARTING 1)')
    >>> readiness({"Ingress": ("HEALTHY", {"RUNNING": 2})})[:2]
    (True, {'status': 'ready', 'deployments': {'Ingress': {'status': 'HEALTHY', 'replicas': {'RUNNING': 2}, 'ready': True}}})
    """
    report = {name: deployment_report(status, states) for name, (status, states) in sorted(deployments.items())}
    waiting = [name for name, r in report.items() if not r["ready"]]
    ready = bool(report) and not waiting
    why = "; ".join(
        f"{name} has no running replica ({report[name]['status']}"
        + "".join(f"; {state} {count}" for state, count in report[name]["replicas"].items()) + ")"
        for name in waiting)
    message = "ready" if ready else f"not ready: {why or 'no deployment is running'}"
    return ready, {"status": "ready" if ready else "not ready", "deployments": report}, message
