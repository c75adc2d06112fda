# syntax=docker/dockerfile:1
# The images the KubeRay manifests in cluster/ run. Three targets:
#
#   docker build -t REGISTRY/lmcot:0.1.0 .                              # every Ray pod (default, the last stage)
#   docker build --target submitter -t REGISTRY/lmcot-submitter:0.1.0 . # RayJob submitters: the Ray CLI, no torch/CUDA
#   docker build --target vllm -t REGISTRY/lmcot-vllm:0.1.0 .           # the `qwen` preset (large LM on vLLM)
#
# The tag is the version in pyproject.toml; set the names once in your kustomize overlay
# (cluster/overlays/example, `images:`). Pin the bases by digest once you have pulled them.
#
# CUDA. torch comes from PyTorch's own index for one named CUDA version, never from PyPI (whose
# torch 2.13.0 is the CUDA 13.0 build, which needs a 580+ driver), and the build fails unless
# `torch.version.cuda` is that version: a CPU wheel (torch.version.cuda None) cannot slip in.
#   TORCH_CUDA=cu128 (default): CUDA 12.8, NVIDIA driver >= 570 (R570, R575, R580...).
#   TORCH_CUDA=cu126:           CUDA 12.6, driver >= 560, for clusters still on R560/R565.
# The vllm target is CUDA 13.0 (vllm 0.30.0's PyPI wheel is built against torch 2.13.0+cu130):
# driver >= 580.
#
# Layers: the dependencies are installed from pyproject.toml's list and constraints.txt before
# the package's code is copied, so a code change rebuilds only the last small layers.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
ARG PYTHON_IMAGE=python:3.11-slim

# --- the shared start: Ray 2.60.0 on Python 3.11 with CUDA, as the non-root user `ray` ----------
FROM ${RAY_IMAGE} AS ray-base
# The base image's user `ray` (uid 1000, gid 100) owns its Python in /home/ray/anaconda3;
# the pods run as this uid too (runAsUser: 1000), never as root.
USER 1000:100
WORKDIR /home/ray/lmcot
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false
COPY --chown=1000:100 constraints.txt pyproject.toml ./
# pyproject.toml's dependency list as a requirements file (the package itself comes later).
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
    > /home/ray/requirements.txt

# --- lmcot's dependencies on torch 2.13.0 for TORCH_CUDA ----------------------------------------
FROM ray-base AS deps
ARG TORCH_CUDA=cu128
# The exact versions of constraints.txt (ray==2.60.0 included, so the base's Ray stays put).
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" "torch==2.13.0+${TORCH_CUDA}" \
 && pip install -c constraints.txt -r /home/ray/requirements.txt \
 && python -c "import ray, torch; \
want = '${TORCH_CUDA}'.removeprefix('cu'); want = want[:-1] + '.' + want[-1]; \
assert ray.__version__ == '2.60.0', ray.__version__; \
assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__; \
assert torch.version.cuda == want, f'torch built for CUDA {torch.version.cuda}, want {want}'; \
print('ray', ray.__version__, 'torch', torch.__version__, 'CUDA', torch.version.cuda)"

# --- the qwen preset's vLLM backend: vllm 0.30.0 pins torch==2.13.0 and the CUDA 13.0 build -------
FROM ray-base AS vllm-deps
# vllm pins fastapi<0.137 and its own numpy: those two come from vllm's pins, the rest from
# constraints.txt (the resolution was checked with `pip install --dry-run` for Python 3.11).
RUN grep -v -E '^(fastapi|numpy)==' constraints.txt > /home/ray/constraints.vllm.txt \
 && pip install --index-url https://download.pytorch.org/whl/cu130 "torch==2.13.0+cu130" \
 && pip install -c /home/ray/constraints.vllm.txt -r /home/ray/requirements.txt vllm==0.30.0 \
 && python -c "import torch, vllm; \
assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__; \
assert torch.version.cuda == '13.0', torch.version.cuda; \
print('vllm', vllm.__version__, 'torch', torch.__version__, 'CUDA', torch.version.cuda)"

# --- the code: the same few layers on top of either set of dependencies ----------------------------
FROM scratch AS code
COPY README.md pyproject.toml /src/
COPY lmcot /src/lmcot
COPY jobs /src/jobs
COPY configs /src/configs
COPY serve_configs /src/serve_configs

# --- RayJob submitters: `ray job submit` / `ray job logs` only ----------------------------------
# KubeRay's submitter pod runs the Ray CLI against the head's dashboard; the job's driver runs on
# the head, so nothing of lmcot, torch or CUDA is needed here. Also the shell for the run volume's
# init Job (cluster/base/job.lmcot-runs-init.yaml).
FROM ${PYTHON_IMAGE} AS submitter
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
COPY constraints.txt /tmp/constraints.txt
RUN pip install -c /tmp/constraints.txt "ray[default]==2.60.0" \
 && rm /tmp/constraints.txt \
 && useradd --uid 1000 --gid 100 --create-home ray \
 && ray --version
USER 1000:100
WORKDIR /home/ray

FROM vllm-deps AS vllm
COPY --from=code --chown=1000:100 /src/ ./
# Editable, so the presets in configs/ resolve next to the package (lmcot/config PRESETS_DIR).
RUN pip install --no-deps -e . && ln -s /mnt/runs/data data

# --- the default target: every Ray pod of cluster/ --------------------------------------------------
FROM deps AS lmcot
COPY --from=code --chown=1000:100 /src/ ./
# Editable, so the presets in configs/ resolve next to the package (lmcot/config PRESETS_DIR).
# The presets' relative data paths (data/2wikimultihopqa/...) land on the shared run volume.
RUN pip install --no-deps -e . && ln -s /mnt/runs/data data \
 && python -c "import importlib.metadata as m, lmcot; print('lmcot', m.version('lmcot'))"
