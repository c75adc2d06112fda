"""Which model plays which role, and how it is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

FAMILIES = ("auto", "seq2seq", "causal")
DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("hf", "vllm", "openai")
PLACEMENT_AMOUNT = 0.001


@dataclass(frozen=True)
class ModelSpec:
    """A model by hub id, local path or ``tiny:<name>`` (built locally on first use)."""

    name_or_path: str = "tiny:t5-small"
    """Hub id (``google/flan-t5-large``), a local directory written by ``save_pretrained``,
    ``tiny:<name>`` for one of lmcot's offline random tiny models (see ``lmcot make-tiny-models``), or
    ``tiny:world-large`` / ``tiny:world-small`` for the tiny world's T5s pretrained on CPU and shipped
    with the package (the ``tiny_world`` preset's models)."""
    family: str = "auto"
    """``seq2seq`` (T5-like), ``causal`` (decoder-only) or ``auto`` (read from the model config)."""
    dtype: str = "auto"
    """``auto`` picks bfloat16 on a GPU that supports it and float32 on CPU."""
    device: str = "auto"
    """``auto`` (cuda when visible, else cpu), ``cpu`` or ``cuda``."""
    backend: str = "hf"
    """``hf`` (transformers generate), ``vllm`` (causal models on GPUs) or ``openai``
    (any OpenAI-compatible endpoint: a black-box large LM)."""
    base_url: str = ""
    """For ``backend: openai``: the server's base URL, e.g. ``http://127.0.0.1:8000/v1``."""
    api_key_env: str = "OPENAI_API_KEY"
    """For ``backend: openai``: the environment variable holding the API key (never the key itself)."""
    max_concurrency: int = 8
    """For ``backend: openai``: requests in flight at once."""
    gpu_memory_utilization: float = field(default=0.9, metadata={"fingerprint": False})
    """For ``backend: vllm``: the share of the whole card vLLM reserves at start (weights plus a paged KV
    cache filling the rest), whatever the model needs; anything else on that card (the small LM of an
    evaluation actor or a search trial) lives in what is left. ``lmcot plan`` counts it."""
    chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when a causal model has one."""
    revision: str = ""
    """Hub revision (branch, tag or commit); empty for the default."""
    max_input_tokens: int = 0
    """Most prompt tokens this model reads; 0: what its tokenizer and config declare (FLAN-T5: 512,
    Qwen2.5: 32,768 positions shared with the generated tokens). Prompts are fitted to it by
    shortening only their context (:mod:`lmcot.prompting.fitting`). For ``backend: openai`` without a local
    tokenizer, set it to the endpoint's context window (tokens are then estimated from characters)."""
    ray_resource: str = field(default="", metadata={"fingerprint": False})
    """A custom Ray resource that pins every actor or worker holding this model to the worker
    group offering it (``small_lm`` / ``large_lm`` in ``cluster/base/ray-cluster.lmcot.yaml``), so
    the autoscaler grows the right GPU group; empty: any node with the CPUs/GPUs it needs."""

    def placement(self) -> dict[str, float]:
        """Extra Ray resources of one actor or worker holding this model.

        A token amount, as Ray's own ``accelerator_type`` constraint uses: it selects the
        group, while the CPU/GPU requests still decide how many actors share a node.

        >>> ModelSpec(ray_resource="large_lm").placement()
        {'large_lm': 0.001}
        >>> ModelSpec().placement()
        {}
        """
        return {self.ray_resource: PLACEMENT_AMOUNT} if self.ray_resource else {}

    def __post_init__(self):
        if not self.name_or_path:
            raise ValueError("name_or_path is empty: give a hub id, a local path or tiny:t5-small")
        for field, value, valid in (
            ("family", self.family, FAMILIES),
            ("dtype", self.dtype, DTYPES),
            ("backend", self.backend, BACKENDS),
        ):
            if value not in valid:
                raise ValueError(f"{field}={value!r} is not one of {', '.join(valid)}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device={self.device!r}: use auto, cpu, cuda or cuda:N")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend=openai needs base_url, e.g. http://127.0.0.1:8000/v1")
        if self.ray_resource in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ValueError(f"ray_resource={self.ray_resource!r} is a built-in Ray resource: name a custom one "
                             "(e.g. large_lm) that the worker group meant for this model offers")
        if self.max_input_tokens < 0:
            raise ValueError("max_input_tokens must be >= 0 (0: the limit the model declares)")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]: the share of the card vLLM reserves")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
