# The lmcot image the KubeRay manifests in cluster/ run: Ray 2.60.0 with CUDA and Python 3.11,
# plus lmcot and the exact versions its tests ran on (constraints.txt).
#
#   docker build -t ghcr.io/lmcot/lmcot:0.1.0 .      # the tag is the version in pyproject.toml
#
# Pin the base by digest once you have pulled it (rayproject/ray:2.60.0-py311-gpu@sha256:...).
FROM rayproject/ray:2.60.0-py311-gpu

# The base image's user `ray` (uid 1000, gid 100) owns its Python in /home/ray/anaconda3;
# the pods run as this uid too (runAsUser: 1000), never as root.
USER 1000:100
WORKDIR /home/ray/lmcot
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false

# torch first and pinned as in the Makefile, here the CUDA wheel from PyPI; then lmcot. Both
# take the exact versions of constraints.txt (ray==2.60.0 included, so the base's Ray stays put).
COPY --chown=1000:100 constraints.txt ./
RUN pip install -c constraints.txt torch==2.13.0
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 lmcot ./lmcot
# Editable, so the presets in configs/ resolve next to the package (lmcot/config PRESETS_DIR).
RUN pip install -c constraints.txt -e . \
 && python -c "import importlib.metadata as m, ray, torch; \
assert ray.__version__ == '2.60.0', ray.__version__; \
assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__; \
print('lmcot', m.version('lmcot'), 'ray', ray.__version__, 'torch', torch.__version__)"
COPY --chown=1000:100 jobs ./jobs
COPY --chown=1000:100 configs ./configs
COPY --chown=1000:100 serve_configs ./serve_configs
# The presets' relative data paths (data/2wikimultihopqa/...) land on the shared run volume.
RUN ln -s /mnt/runs/data data
