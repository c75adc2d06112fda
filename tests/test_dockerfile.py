"""The ``Dockerfile`` builds what the KubeRay manifests run: the Ray image the constraints pin,
torch from an explicit CUDA index at the Makefile's pin, a light submitter image and a vLLM
target, and a ``.dockerignore`` that lets through only what it copies."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY_VERSION = dict(re.findall(r"(?im)^([A-Za-z0-9_.\-]+)==([^\s#]+)", (ROOT / "constraints.txt").read_text()))["ray"]


def dockerfile_stages() -> dict[str, dict]:
    """Stage name -> {from, lines} of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    args = dict(re.findall(r"(?m)^ARG (\w+)=(\S+)", text.split("\nFROM ", 1)[0]))
    stages: dict[str, dict] = {}
    for line in (l.strip() for l in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            base, _, name = line.split()[1:4]
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
            stages[name] = {"from": base, "lines": []}
        elif stages:
            stages[list(stages)[-1]]["lines"].append(line)
    return stages


def test_dockerfile_targets_layers_and_cuda():
    stages = dockerfile_stages()
    assert list(stages)[-1] == "lmcot", "the default target is the image of every Ray pod"
    assert stages["ray-base"]["from"] == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    assert {"submitter", "vllm"} <= set(stages)

    def chain(name):  # a stage and the stages it is built on
        return [name] + (chain(stages[name]["from"]) if stages[name]["from"] in stages else [])

    def run(name):
        return " ".join(l for s in chain(name) for l in stages[s]["lines"] if l.startswith("RUN "))

    (torch_pin,) = set(re.findall(r"\btorch==([0-9.]+)", (ROOT / "Makefile").read_text()))
    for target, cuda in (("lmcot", r"\$\{TORCH_CUDA\}"), ("vllm", "cu130")):
        text = run(target)
        # torch from PyTorch's index for a named CUDA, then a build-time check of torch.version.cuda.
        assert re.search(rf"--index-url \"?https://download\.pytorch\.org/whl/{cuda}\"? \"torch=={re.escape(torch_pin)}\+{cuda}\"", text), target
        assert "torch.version.cuda ==" in text, target
        # Dependencies before code: the stages that install them copy no package code, and the
        # final stage installs the package alone on top.
        for stage in chain(target)[1:]:
            for line in (l for l in stages[stage]["lines"] if l.startswith("COPY ")):
                sources = {w for w in line.split()[1:-1] if not w.startswith("--")}
                assert sources <= {"constraints.txt", "pyproject.toml"}, (stage, line)
        assert "-r /home/ray/requirements.txt" in text and "pip install --no-deps -e ." in text
    assert re.search(r"\bvllm==[0-9.]+", run("vllm")) and "vllm" not in run("lmcot")
    assert "-c constraints.txt" in run("lmcot"), "the exact versions of constraints.txt"
    assert "ARG TORCH_CUDA=cu128" in (ROOT / "Dockerfile").read_text()

    submitter = stages["submitter"]
    assert submitter["from"].startswith("python:3.11-slim")
    text = " ".join(submitter["lines"])
    assert f'"ray[default]=={RAY_VERSION}"' in text and "torch" not in text, "the Ray CLI, nothing heavy"
    for target in ("lmcot", "vllm", "submitter"):
        users = [l.split()[1] for s in chain(target) for l in stages[s]["lines"] if l.startswith("USER ")]
        assert users and users[0].split(":")[0] not in ("root", "0"), f"{target} ends as a non-root user"
        workdir = [l.split()[1] for s in chain(target)[::-1] for l in stages[s]["lines"] if l.startswith("WORKDIR ")]
        assert workdir[-1] == ("/home/ray" if target == "submitter" else "/home/ray/lmcot"), target


def test_dockerignore_allows_only_what_the_dockerfile_copies():
    # .dockerignore is an allowlist: nothing but the package, its entry points and presets.
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*"
    kept = [p[1:].strip("/") for p in patterns if p.startswith("!")]
    assert {"lmcot", "jobs", "configs", "constraints.txt", "pyproject.toml"} <= set(kept)
    assert not {".venv", "artifacts", "runs", ".git", "tests"} & set(kept)
    for stage in dockerfile_stages().values():
        for line in stage["lines"]:
            if line.startswith("COPY ") and "--from=" not in line:
                for src in [w for w in line.split()[1:-1] if not w.startswith("--")]:
                    assert src.strip("/") in kept, f"COPY {src}: not in the .dockerignore allowlist"
