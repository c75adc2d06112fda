"""Models: loading, the generator Protocol and its backends (HF, vLLM, OpenAI), tiny offline models."""
