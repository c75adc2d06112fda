"""Teacher rationales on Ray Data: fills RUN/rationales exactly once, survives killed actors and drivers,
and runs through ``ray job submit`` against a token-authenticated ``ray start`` cluster on loopback.

Real processes only: a real local Ray cluster (the ``ray_cluster`` fixture), a real ``ray start``
head node on 127.0.0.1 in its own temp dir, real SIGKILLs of processes these tests started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from lmcot.config import load_config
from lmcot.datasets.data import load_split
from lmcot.runs.rundir import RunDir
from lmcot.runs.step import done as recorded_step
from lmcot.training.teacher import read_rationales, shard_paths

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def overrides(hotpot: int, wiki: int) -> list[str]:
    """Small tiny-preset runs: ``hotpot``/``wiki`` questions (0 drops 2Wiki), shards of 8 rows."""
    sets = []
    if not wiki:
        sets.append("data.datasets=[{name: hotpotqa, format: hotpotqa, "
                    "train_path: 'sample:hotpotqa_synthetic_train', dev_path: 'sample:hotpotqa_synthetic_dev'}]")
    sets += [f"data.datasets.0.limit={hotpot}", "rationales.shard_rows=8", "rationales.batch_size=4"]
    if wiki:
        sets.append(f"data.datasets.1.limit={wiki}")
    return sets


def expected(cfg) -> Counter:
    k = cfg.rationales.samples_per_question
    return Counter((spec.name, ex.id, s) for spec in cfg.data.datasets for ex in load_split(spec, "train")
                   for s in range(k))


def written(run_dir: Path) -> Counter:
    t = read_rationales(Path(run_dir) / "rationales", ["dataset", "id", "sample"])
    return Counter(zip(t["dataset"].to_pylist(), t["id"].to_pylist(), t["sample"].to_pylist()))


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_job_submit_to_token_auth_cluster_on_loopback(tmp_path):
    """README's recipe: ``ray start --head`` on 127.0.0.1 with token auth, then ``ray job submit``."""
    gcs, dash, client, agent, agent_grpc, env_agent, metrics = free_ports(7)
    ray_tmp = tempfile.mkdtemp(prefix="lmcot-ray-", dir="/tmp")  # short: Ray's socket paths are length-limited
    token_file = tmp_path / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PATH=f"{VENV_BIN}:{env['PATH']}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    run_dir = tmp_path / "run"
    try:
        # The job's driver and workers inherit this environment (HF_HUB_OFFLINE, LMCOT_TINY_DIR, ...).
        subprocess.run(
            [VENV_BIN / "ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
             f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={env_agent}",
             f"--metrics-export-port={metrics}", "--num-cpus=2", f"--temp-dir={ray_tmp}", "--disable-usage-stats"],
            env=env, cwd=ROOT, check=True, timeout=180, capture_output=True,
        )
        job = subprocess.run(
            [VENV_BIN / "ray", "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ".",
             "--",
             "python", "jobs/generate_rationales.py", "--config", "tiny", "--run-dir", str(run_dir),
             *[a for s in overrides(3, 2) + ["rationales.num_actors=1"] for a in ("--set", s)]],
            env=env, cwd=ROOT, timeout=300, capture_output=True, text=True,
        )
        assert job.returncode == 0 and "succeeded" in job.stdout.lower(), job.stdout[-3000:] + job.stderr[-3000:]
        # The job API refuses a request without the token, and serves one with it.
        with httpx.Client(base_url=f"http://127.0.0.1:{dash}", timeout=30, trust_env=False) as api:
            assert api.get("/api/jobs/").status_code == 401
            assert api.get("/api/jobs/", headers={"Authorization": "Bearer wrong"}).status_code == 403
            assert api.get("/api/jobs/", headers={"Authorization": f"Bearer {token_file.read_text()}"}).is_success
    finally:
        stop_cluster(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    cfg = load_config("tiny", overrides(3, 2))
    got = written(run_dir)
    assert got == expected(cfg) and max(got.values()) == 1
    stats = json.loads((run_dir / "rationales" / "stats.json").read_text())
    assert stats["rows"] == stats["expected_rows"] == 10 and stats["completion_tokens"] > 0


def stop_cluster(ray_tmp: str) -> None:
    """Stop only the cluster started in ``ray_tmp``: its processes (found by that unique path) and children."""
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        if any(ray_tmp in part for part in (p.info["cmdline"] or [])):
            procs.append(p)
            procs += p.children(recursive=True)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def teacher_actor_pids() -> list[int]:
    """PIDs of the Ray Data teacher actors of this test process's own Ray cluster."""
    me = psutil.Process()
    pids = []
    for child in me.children(recursive=True):
        try:
            if "TeacherActor" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def test_killed_actor_is_restarted_and_every_row_written_once(ray_cluster, tmp_path):
    from lmcot.stages import rationales

    cfg = load_config("tiny", overrides(24, 0) + ["rationales.filter=em"])
    run_dir = RunDir(tmp_path / "run")
    killed: list[int] = []

    def kill_one_actor():
        # Once the first shard exists both actors are generating: kill one of them mid-run.
        wait_for(lambda: shard_paths(run_dir.rationales), 240, "the first shard")
        pid = wait_for(teacher_actor_pids, 60, "a teacher actor process")[0]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_one_actor, daemon=True)
    killer.start()
    result = rationales.run(cfg, run_dir)
    killer.join(timeout=5)
    assert killed, "no actor was killed before the run ended"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    got = written(run_dir.root)
    assert got == expected(cfg) and max(got.values()) == 1
    assert result["rows"] == sum(got.values()) == 48
    # The random tiny teacher states no answer: under the em filter no row is kept, each says why.
    table = read_rationales(run_dir.rationales, ["kept", "reason"])
    assert not any(table["kept"].to_pylist()) and set(table["reason"].to_pylist()) <= {"no_answer", "empty_output"}


def test_killed_driver_resumes_without_duplicates_or_gaps(ray_cluster, tmp_path):
    from lmcot.stages import rationales

    sets = overrides(16, 2)
    cfg = load_config("tiny", sets)
    run_dir = RunDir(tmp_path / "run")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(
            [sys.executable, "jobs/generate_rationales.py", "--config", "tiny", "--run-dir", str(run_dir.root),
             *[a for s in sets for a in ("--set", s)]],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: shard_paths(run_dir.rationales) or driver.poll() is not None, 240, "the first shard")
    finally:
        driver.kill()  # SIGKILL: no cleanup runs, as in a crash
        driver.wait(timeout=30)
    assert driver.returncode == -signal.SIGKILL, f"the driver ended by itself:\n{log.read_text()[-3000:]}"
    before = written(run_dir.root)
    want = expected(cfg)
    assert max(before.values()) == 1 and 0 < sum(before.values()) < sum(want.values())

    record = run_dir.step_record(run_dir.rationales)
    assert not record.exists(), "a killed run records no step"
    result = rationales.run(cfg, run_dir)
    # the command run alone records its step, which `lmcot run` then skips (the pipeline's rule)
    assert recorded_step(run_dir.rationales, rationales.stage_identity(cfg)) == json.loads(json.dumps(result))
    after = written(run_dir.root)
    assert after == want and max(after.values()) == 1
    assert result["new_rows"] == sum(want.values()) - sum(before.values())
    assert not list(run_dir.rationales.glob(".*.tmp"))

    shards = [(p.name, p.stat().st_mtime_ns) for p in shard_paths(run_dir.rationales)]
    again = rationales.run(cfg, run_dir)
    assert again["new_rows"] == 0 and again["rows"] == sum(want.values())
    assert [(p.name, p.stat().st_mtime_ns) for p in shard_paths(run_dir.rationales)] == shards
    # The tiny preset keeps every rationale of its random teacher (f1 >= 0), noting it gave no answer.
    table = read_rationales(run_dir.rationales, ["kept", "reason"])
    assert all(table["kept"].to_pylist()) and set(table["reason"].to_pylist()) <= {"no_answer", "empty_output", ""}
    stats = json.loads((run_dir.rationales / "stats.json").read_text())
    assert stats["rows"] == stats["kept"] == sum(want.values()) and len(stats["runs"]) == 2
