"""Serve latency benchmark: batching gain, HTTP overhead and a loopback load, printed as ratios.

Runs the real graph (``lmcot.stages.serve``) on a local Ray cluster with the tiny models,
sized so one model call costs about ``--call-ms`` of compute, and measures side by side
in one run (calls interleaved, so a busy machine slows both sides alike):

(a) one request with k=5 (5 rationales in one sampled call, 5 answers in one batched call)
    against 5 sequential k=1 requests; goal: >= 3x.
(b) p50 of an lm_guided k=1 request over HTTP against the same flow in-process
    (``lmcot.inference.method.run_method`` on the same models, one torch thread like a replica,
    replicas at the bench's CPU priority); goal: <= 1.10x.
(c) ``--clients`` concurrent clients for ``--seconds`` on 127.0.0.1: throughput, p50, p99,
    errors; goal: 0 errors.

``--contention`` measures instead how normal and maximal requests fare together: normal clients
send small chat completions (greedy, 4 tokens) and 3 clients send maximal ones
(``--large-prompts`` x n=4 x 256 tokens with 20 logprobs, the most the default
``serve.max_request_tokens`` admits), for ``--seconds`` in three phases: normal alone, maximal
alone, both together. It prints p50/p99 of each kind in each phase side by side, and every
non-200 answer (the goal: every request answered within ``serve.request_timeout_s``, no 5xx).
``--engine static,continuous`` deploys one graph per ``generation.engine`` side by side on the same
cluster (each under its own route prefix) and runs each phase on each engine in turn, so both meet
the same machine load; the table adds normal requests' p99 mixed over alone per engine.
``--maximal-logprobs 0`` sends the maximal requests without logprobs. Normal clients are closed-loop
(each sends its next request when the last is answered), so an engine that answers them faster also
serves more of them beside the maximal requests; ``--normal-rate R`` sends them open-loop instead, R
a second on every engine, so the maximal requests' completion times compare under the same work.
``--src DIR`` deploys the lmcot package found in DIR instead of this checkout (replicas get it
through ``PYTHONPATH``), so an older version can be measured with the same script:
``git archive REV lmcot configs | tar -x -C /tmp/before``.

    python bench/serve_latency.py                       # the full run (~3 min on 2 CPUs)
    python bench/serve_latency.py --clients 8 --seconds 10 --repeats 5   # a quick look
    python bench/serve_latency.py --contention --seconds 30 [--src /tmp/before]   # ~2 min
    python bench/serve_latency.py --contention --seconds 15 --engine static,continuous   # ~5 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LMCOT_TINY_DIR", str(ROOT / "artifacts" / "tiny-models"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray starts its workers (replicas, proxy) at nice 15 by default; on a machine shared with
# other work that starves every hop of the graph but not the in-process side. The bench's
# own cluster runs them at the bench's priority, so both sides compete alike.
os.environ.setdefault("RAY_worker_niceness", "0")
if "--src" in sys.argv:  # before anything imports lmcot, here and in the cluster's processes
    SRC = str(Path(sys.argv[sys.argv.index("--src") + 1]).resolve())
    os.environ["PYTHONPATH"] = os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    sys.path.insert(0, SRC)
else:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import torch  # noqa: E402

from lmcot.prompting import prompts  # noqa: E402
from lmcot.config import ModelSpec  # noqa: E402
from lmcot.datasets.data import load_split  # noqa: E402
from lmcot.models.generation import HFGenerator  # noqa: E402
from lmcot.inference.method import Question, run_method  # noqa: E402
from lmcot.stages.serve import config_from_args, graph  # noqa: E402
from lmcot.serving.answer import context_text  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def time_call(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cpu_time_call(fn) -> float:
    """CPU seconds ``fn`` costs this process: the compute itself, however busy the machine is."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def calibrate(gen: HFGenerator, prompt: str, target_s: float) -> tuple[int, float]:
    """max_new_tokens so that one greedy call on ``prompt`` costs about ``target_s`` of CPU time.

    A call costs a fixed part (encoding the prompt) plus a part per new token: both are
    measured at 4 and 64 tokens and solved for the target. CPU time (one torch thread), not
    wall time, so the sizing holds on a machine shared with other work.
    """
    def measure(tokens: int) -> float:
        gen.generate([prompt], max_new_tokens=tokens)  # warm
        return statistics.median(cpu_time_call(lambda: gen.generate([prompt], max_new_tokens=tokens)) for _ in range(3))

    lo, hi = 4, 64
    t_lo, t_hi = measure(lo), measure(hi)
    per_token = max((t_hi - t_lo) / (hi - lo), 1e-4)
    tokens = max(1, min(512, round(lo + (target_s - t_lo) / per_token)))
    return tokens, measure(tokens)


async def load(url: str, body: dict, clients: int, seconds: float, timeout_s: float) -> dict:
    """``clients`` closed-loop clients for ``seconds``: latencies of successes, count of errors."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        async def worker():
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, json=body)
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t0)
                        continue
                    key = str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                errors[key] = errors.get(key, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"requests": len(latencies), "errors": errors, "wall_s": wall, "latencies": latencies}


def deploy(cfg, apps: dict | None = None) -> int:
    """Start a local 2-CPU cluster and the graph on a free loopback port; returns the port.

    ``apps`` ({route prefix: config}) deploys several graphs side by side instead (default: ``cfg`` at /)."""
    from ray import serve

    from lmcot.stages.cluster import ensure_ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ensure_ray(num_cpus=2)
    quiet = {"log_level": "WARNING", "enable_access_log": False}
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=quiet)
    for prefix, app_cfg in (apps or {"/": cfg}).items():
        name = "-".join(["lmcot"] + [part for part in prefix.split("/") if part])
        serve.run(graph(app_cfg), name=name, route_prefix=prefix, logging_config=quiet)
    return port


def contention(args) -> dict:
    """Normal and maximal requests alone and together (see the module docstring)."""
    import ray
    from ray import serve

    import lmcot

    engines = args.engine.split(",")
    cfgs = {e: config_from_args({"config": "tiny", "serve": {"request_timeout_s": args.timeout},  # static: the default
                                 **({"generation": {"engine": e}} if e != "static" else {})}) for e in engines}
    port = deploy(None, {f"/{e}": cfg for e, cfg in cfgs.items()})
    bases = {e: f"http://127.0.0.1:{port}/{e}/openai/v1" for e in engines}
    cfg = cfgs[engines[0]]
    model = cfg.large.name_or_path
    small = {"model": model, "messages": [{"role": "user", "content": "Is the sky blue? Answer yes or no."}],
             "max_tokens": 4, "temperature": 0}
    large = {"model": model, "prompt": [f"Question {i}: who was born first, Alpha or Beta?" for i in range(args.large_prompts)],
             "n": 4, "max_tokens": 256, "temperature": 1.0}
    if args.maximal_logprobs:
        large["logprobs"] = args.maximal_logprobs

    def summary(latencies: list[float], statuses: list) -> dict:
        ok = sorted(latencies)
        return {"ok": len(ok), "p50_ms": round(1000 * pct(ok, 0.5)) if ok else None,
                "p99_ms": round(1000 * pct(ok, 0.99)) if ok else None, "max_ms": round(1000 * ok[-1]) if ok else None,
                "not_200": {str(s): statuses.count(s) for s in set(statuses)}}

    async def phase(base: str, normal: bool, maximal: bool) -> dict:
        stop_at = time.perf_counter() + args.seconds
        lat = {"normal": [], "maximal": []}
        bad = {"normal": [], "maximal": []}
        async with httpx.AsyncClient(timeout=args.timeout + 30, limits=httpx.Limits(max_connections=None)) as client:
            async def one(kind: str, route: str, body: dict):
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"{base}/{route}", json=body)
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                if status == 200:
                    lat[kind].append(time.perf_counter() - t0)
                else:
                    bad[kind].append(status)

            async def loop(kind: str, route: str, body: dict):
                while time.perf_counter() < stop_at:
                    await one(kind, route, body)

            async def paced(kind: str, route: str, body: dict, rate: float):
                """Open loop: one request every 1/rate s whether or not the earlier ones are answered."""
                start, sent, pending = time.perf_counter(), 0, []
                while time.perf_counter() < stop_at:
                    pending.append(asyncio.create_task(one(kind, route, body)))
                    sent += 1
                    await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
                await asyncio.gather(*pending)

            tasks = []
            if normal:
                tasks = ([paced("normal", "chat/completions", small, args.normal_rate)] if args.normal_rate else
                         [loop("normal", "chat/completions", small) for _ in range(args.normal_clients)])
            tasks += [loop("maximal", "completions", large) for _ in range(3)] if maximal else []
            await asyncio.gather(*tasks)
        return {kind: summary(lat[kind], bad[kind]) for kind in ("normal", "maximal")
                if (normal if kind == "normal" else maximal)}

    phases = {e: {} for e in engines}
    try:
        warm = args.seconds
        args.seconds = 5
        for e in engines:
            asyncio.run(phase(bases[e], True, False))  # warm every path
        args.seconds = warm
        for name, normal, maximal in (("normal_alone", True, False), ("maximal_alone", False, True),
                                      ("mixed", True, True)):
            for e in engines:  # each phase on each engine in turn: both meet the same machine load
                phases[e][name] = asyncio.run(phase(bases[e], normal, maximal))
    finally:
        serve.shutdown()
        ray.shutdown()
    results = {}
    for e, p in phases.items():
        normal = {"alone": p["normal_alone"]["normal"], "mixed": p["mixed"]["normal"]}
        p99 = normal["alone"]["p99_ms"], normal["mixed"]["p99_ms"]
        results[e] = {"normal": normal, "maximal": {"alone": p["maximal_alone"]["maximal"],
                                                    "mixed": p["mixed"]["maximal"]},
                      "normal_p99_mixed_over_alone": round(p99[1] / p99[0], 2) if all(p99) else None}
    return {"lmcot": str(Path(lmcot.__file__).parent), "seconds_per_phase": args.seconds,
            "request_timeout_s": args.timeout, "normal_clients": args.normal_clients, "maximal_clients": 3,
            "normal_rate_per_s": args.normal_rate,
            "generation_batch_size": cfg.generation.batch_size, "max_chunk_tokens": cfg.serve.max_chunk_tokens,
            "maximal_request": {k: v for k, v in large.items() if k != "prompt"} | {"prompts": args.large_prompts},
            "engines": results}


def print_contention(out: dict) -> None:
    print("| engine | request | alone p50 / p99 (ok, not 200) | mixed p50 / p99 (ok, not 200) | p99 mixed / alone |")
    print("|---|---|---|---|---|")
    for engine, res in out["engines"].items():
        for kind in ("normal", "maximal"):
            cells = []
            for when in ("alone", "mixed"):
                s = res[kind][when]
                cells.append(f"{s['p50_ms']} / {s['p99_ms']} ms ({s['ok']} ok, {s['not_200'] or 'none'})")
            a, m = res[kind]["alone"]["p99_ms"], res[kind]["mixed"]["p99_ms"]
            ratio = f"{m / a:.1f}x" if a and m else "-"
            print(f"| {engine} | {kind} | {cells[0]} | {cells[1]} | {ratio} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--call-ms", type=float, default=200.0, help="target model compute per call (b)")
    p.add_argument("--small-tokens", type=int, default=0, help="skip calibration: rationale tokens per call")
    p.add_argument("--large-tokens", type=int, default=0, help="skip calibration: answer tokens per call")
    p.add_argument("--repeats", type=int, default=10, help="interleaved repeats for (a); 3x that for (b)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients for (c)")
    p.add_argument("--seconds", type=float, default=60.0, help="duration of (c)")
    p.add_argument("--load-k", type=int, default=3, help="self-consistency k of the (c) requests")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    p.add_argument("--contention", action="store_true", help="normal and maximal requests alone and together")
    p.add_argument("--normal-clients", type=int, default=2, help="clients sending normal requests (--contention)")
    p.add_argument("--normal-rate", type=float, default=0.0,
                   help="send normal requests open-loop at this rate per second instead of from --normal-clients "
                        "(the same normal work on every engine, so maximal completion times compare) (--contention)")
    p.add_argument("--timeout", type=float, default=60.0, help="serve.request_timeout_s (--contention)")
    p.add_argument("--large-prompts", type=int, default=16, help="prompts per maximal request (--contention)")
    p.add_argument("--engine", default="static",
                   help="generation.engine(s) to measure side by side, comma-separated (--contention)")
    p.add_argument("--maximal-logprobs", type=int, default=20,
                   help="logprobs of the maximal requests; 0: none (--contention)")
    p.add_argument("--src", default=None, help="deploy the lmcot package in this directory (--contention)")
    args = p.parse_args(argv)
    if args.contention:
        load_start = os.getloadavg()[0]
        out = contention(args) | {"loadavg_1m": [load_start, os.getloadavg()[0]]}
        print(json.dumps(out, indent=1))
        print_contention(out)
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
        return 0

    load_start = os.getloadavg()[0]
    torch.set_num_threads(1)  # a replica with a fractional CPU runs torch on one thread
    base = config_from_args({"config": "tiny"})
    example = load_split(base.data.datasets[0], "dev")[0]
    official = [[par.title, list(par.sentences)] for par in example.paragraphs]

    print(f"loading tiny models; calibrating one call to ~{args.call_ms:.0f} ms of CPU (1 torch thread)...", flush=True)
    small, large = HFGenerator(base.small), HFGenerator(base.large)
    context = context_text(official, large.tokenizer, base.data.context_max_tokens)
    small_prompt = prompts.small_rationale_prompt(example.question, context)
    if args.small_tokens:
        small_tokens = args.small_tokens
        small_s = min(cpu_time_call(lambda: small.generate([small_prompt], max_new_tokens=small_tokens)) for _ in range(3))
    else:
        small_tokens, small_s = calibrate(small, small_prompt, args.call_ms / 1000)
    rationale = small.generate([small_prompt], max_new_tokens=small_tokens)[0].texts[0]
    large_prompt = prompts.answer_from_rationale_prompt(example.question, context, rationale)
    if args.large_tokens:
        large_tokens = args.large_tokens
        large_s = min(cpu_time_call(lambda: large.generate([large_prompt], max_new_tokens=large_tokens)) for _ in range(3))
    else:
        large_tokens, large_s = calibrate(large, large_prompt, args.call_ms / 1000)
    print(f"  small LM: {small_tokens} new tokens = {1000 * small_s:.0f} ms CPU; "
          f"large LM: {large_tokens} new tokens = {1000 * large_s:.0f} ms CPU", flush=True)

    app_args = {
        "config": "tiny",
        "generation": {"rationale_max_new_tokens": small_tokens, "answer_max_new_tokens": large_tokens},
        "serve": {"max_k": 8, "request_timeout_s": 120.0,
                  "ingress": {"num_cpus": 0.1, "max_ongoing_requests": 128},
                  "rationalizer": {"num_cpus": 0.25, "max_ongoing_requests": 64, "max_batch_size": 16},
                  "answerer": {"num_cpus": 0.25, "max_ongoing_requests": 64, "max_batch_size": 32}},
    }
    cfg = config_from_args(app_args)
    gen = cfg.generation

    import ray
    from ray import serve

    port = deploy(cfg)
    url = f"http://127.0.0.1:{port}/v1/answer"
    request = {"question": example.question, "context": official, "method": "lm_guided"}
    results: dict = {"small_tokens": small_tokens, "large_tokens": large_tokens,
                     "small_call_ms": 1000 * small_s, "large_call_ms": 1000 * large_s}
    try:
        with httpx.Client(timeout=120) as client:
            def post(k: int) -> dict:
                r = client.post(url, json={**request, "k": k})
                r.raise_for_status()
                return r.json()

            for _ in range(3):
                post(1), post(5)  # warm every path

            # (a) one k=5 request vs 5 sequential k=1 requests, interleaved
            batched, sequential = [], []
            for _ in range(args.repeats):
                batched.append(time_call(lambda: post(5)))
                sequential.append(time_call(lambda: [post(1) for _ in range(5)]))
            a = statistics.median(sequential) / statistics.median(batched)
            results["a"] = {"k5_batched_ms": 1000 * statistics.median(batched),
                            "5x_k1_sequential_ms": 1000 * statistics.median(sequential), "speedup": a}

            # (b) HTTP graph vs the same flow in-process, interleaved
            def in_process_flow():  # what the ingress does: fit the context, then the core method
                q = Question("bench", example.question,
                             context_text(official, large.tokenizer, cfg.data.context_max_tokens))
                return run_method("lm_guided", [q], small=small, large=large, gen=gen, k=1)

            over_http, in_process, in_process_cpu, in_ingress, health = [], [], [], [], []
            for _ in range(3 * args.repeats):
                t0 = time.perf_counter()
                in_ingress.append(post(1)["latency_ms"] / 1000)  # the graph as the ingress times it
                over_http.append(time.perf_counter() - t0)
                c0, t0 = time.process_time(), time.perf_counter()
                in_process_flow()
                in_process.append(time.perf_counter() - t0)
                in_process_cpu.append(time.process_time() - c0)
                health.append(time_call(lambda: client.get(url.replace("/v1/answer", "/healthz"))))
            b = statistics.median(over_http) / statistics.median(in_process)
            results["b"] = {"http_p50_ms": 1000 * statistics.median(over_http),
                            "in_process_p50_ms": 1000 * statistics.median(in_process), "ratio": b,
                            "ingress_p50_ms": 1000 * statistics.median(in_ingress),
                            "in_process_cpu_p50_ms": 1000 * statistics.median(in_process_cpu),
                            "healthz_p50_ms": 1000 * statistics.median(health)}

        # (c) bounded loopback load
        print(f"load: {args.clients} clients x {args.seconds:.0f} s, lm_guided k={args.load_k}...", flush=True)
        c = asyncio.run(load(url, {**request, "k": args.load_k}, args.clients, args.seconds, timeout_s=120))
        lat = c.pop("latencies")
        results["c"] = {**c, "clients": args.clients, "k": args.load_k,
                        "throughput_rps": c["requests"] / c["wall_s"],
                        "p50_ms": 1000 * pct(lat, 0.5) if lat else None, "p99_ms": 1000 * pct(lat, 0.99) if lat else None}
    finally:
        serve.shutdown()
        ray.shutdown()

    a, b, c = results["a"], results["b"], results["c"]
    results["loadavg_1m_end"] = os.getloadavg()[0]
    print(f"\nmachine: {os.cpu_count()} CPUs, 1-min load average {load_start:.1f} at start, "
          f"{results['loadavg_1m_end']:.1f} at the end (other work on the machine slows the multi-process side more)")
    print("| measurement | value | goal |")
    print("|---|---|---|")
    print(f"| (a) 5 sequential k=1 / one k=5 request | {a['5x_k1_sequential_ms']:.0f} ms / {a['k5_batched_ms']:.0f} ms "
          f"= **{a['speedup']:.2f}x** | >= 3x |")
    print(f"| (b) HTTP graph p50 / in-process p50 (lm_guided k=1) | {b['http_p50_ms']:.0f} ms / "
          f"{b['in_process_p50_ms']:.0f} ms = **{b['ratio']:.3f}x** (in-process CPU {b['in_process_cpu_p50_ms']:.0f} ms; "
          f"inside the ingress {b['ingress_p50_ms']:.0f} ms; "
          f"GET /healthz {b['healthz_p50_ms']:.1f} ms) | <= 1.10x |")
    errors = sum(c["errors"].values())
    print(f"| (c) {c['clients']} clients x {c['wall_s']:.0f} s, k={c['k']} | {c['throughput_rps']:.2f} req/s, "
          f"p50 {c['p50_ms']:.0f} ms, p99 {c['p99_ms']:.0f} ms, {c['requests']} ok, **{errors} errors** "
          f"{c['errors'] or ''} | 0 errors |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
