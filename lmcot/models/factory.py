"""The generator for a model spec: the one place that knows every backend.

It lives apart from the :class:`~lmcot.models.generation.Generator` Protocol so that the
Protocol's module imports no backend and the backends (:mod:`lmcot.models.openai_backend`,
:mod:`lmcot.models.vllm_backend`) import the Protocol's types without an import cycle:
imports point from here to the backends, and from the backends to ``generation``.
"""

from __future__ import annotations

from lmcot.config import GenerationConfig, ModelSpec
from lmcot.models.generation import Generator, HFGenerator


def make_generator(spec: ModelSpec, gen: GenerationConfig | None = None) -> Generator:
    """The generator for a model spec's backend (``hf``, ``vllm`` or ``openai``; ``hf`` with
    ``gen.engine: continuous`` gets the continuous-batching engine); vLLM and httpx are imported only
    when their backend is chosen."""
    gen = gen or GenerationConfig()
    if spec.backend == "hf" and gen.engine == "continuous":
        from lmcot.models.continuous import ContinuousGenerator

        return ContinuousGenerator(spec, config=gen)
    if spec.backend == "hf":
        return HFGenerator(spec, config=gen)
    if spec.backend == "openai":
        from lmcot.models.openai_backend import OpenAIGenerator

        return OpenAIGenerator(spec)
    if spec.backend == "vllm":
        from lmcot.models.vllm_backend import VLLMGenerator

        return VLLMGenerator(spec, batch_size=gen.batch_size)
    raise ValueError(f"unknown backend {spec.backend!r}")
