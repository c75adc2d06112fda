"""Ray Serve deployment of the small-LM -> large-LM graph: limits, auth, timeouts, resources.

Read by ``lmcot.stages.serve:build_app``. Every limit here is enforced by the HTTP
ingress before any model is touched, so a bad request costs a 4xx, never a replica.
Each deployment (ingress, rationalizer, answerer) has its own replicas, resources,
batching and autoscaling, because the large LM needs a GPU and the ingress needs
almost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SERVE_METHODS = ("standard", "cot", "lm_guided")


@dataclass(frozen=True)
class DeploymentSpec:
    """Replicas, resources and batching of one Serve deployment."""

    num_replicas: int = 1
    """Fixed replica count (ignored when ``autoscaling`` is on)."""
    num_cpus: float = 0.25
    """CPUs reserved per replica (fractions share a core; torch runs one thread below 1 CPU)."""
    num_gpus: float = 0.0
    """GPUs reserved per replica (``1`` for a large LM on its own GPU, ``0.5`` to share one)."""
    memory_gb: float = 0.0
    """Memory reserved per replica for scheduling, in GiB; 0 reserves none."""
    max_ongoing_requests: int = 32
    """Requests one replica accepts at once; more wait in the caller's queue."""
    max_queued_requests: int = 64
    """Requests each caller (the HTTP proxy, an ingress replica) lets wait for this deployment beyond
    ``max_ongoing_requests``; more are answered 503 with ``Retry-After`` at once instead of queueing
    without bound. -1: no bound."""
    max_batch_size: int = 8
    """Most requests merged into one model call by the replica's work queue (model deployments only)."""
    batch_wait_timeout_s: float = 0.002
    """How long an idle model waits for more requests before it runs a batch. Keep it well below one
    model call: it is added to every call at low load, while under load requests queue during
    the running call and the next batch fills anyway."""
    health_check_period_s: float = 10.0
    """Seconds between Serve's health checks of a replica: how soon a lost replica is replaced, so
    also the ``Retry-After`` of the 503 that a lost replica's clients get."""
    autoscaling: bool = False
    """Scale replicas between ``min_replicas`` and ``max_replicas`` on ongoing requests."""
    min_replicas: int = 1
    """Autoscaling floor (0 allows scale to zero; the first request then waits for a replica)."""
    max_replicas: int = 1
    """Autoscaling ceiling."""
    target_ongoing_requests: float = 4.0
    """Autoscaling target: ongoing requests per replica the autoscaler aims for."""

    def __post_init__(self):
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {self.num_replicas}")
        if self.num_cpus < 0 or self.num_gpus < 0 or self.memory_gb < 0:
            raise ValueError("num_cpus, num_gpus and memory_gb must be >= 0")
        if self.max_ongoing_requests < 1:
            raise ValueError(f"max_ongoing_requests must be >= 1, got {self.max_ongoing_requests}")
        if self.max_queued_requests < 1 and self.max_queued_requests != -1:
            raise ValueError(f"max_queued_requests must be >= 1 or -1 (no bound), got {self.max_queued_requests}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ValueError(
                f"autoscaling needs 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
                f"got min_replicas={self.min_replicas}, max_replicas={self.max_replicas}"
            )
        if self.target_ongoing_requests <= 0:
            raise ValueError(f"target_ongoing_requests must be > 0, got {self.target_ongoing_requests}")
        if self.health_check_period_s <= 0:
            raise ValueError(f"health_check_period_s must be > 0, got {self.health_check_period_s}")

    def deployment_options(self, placement: dict[str, float] | None = None) -> dict:
        """Keyword arguments for ``Deployment.options`` (replicas, actor resources, autoscaling).

        ``placement``: extra Ray resources per replica (the model's ``ray_resource``).

        >>> DeploymentSpec(num_gpus=1).deployment_options({"large_lm": 0.001})["ray_actor_options"]
        {'num_cpus': 0.25, 'num_gpus': 1, 'resources': {'large_lm': 0.001}}
        """
        actor: dict = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            actor["num_gpus"] = self.num_gpus
        if self.memory_gb:
            actor["memory"] = int(self.memory_gb * 1024**3)
        if placement:
            actor["resources"] = dict(placement)
        options: dict = {"ray_actor_options": actor, "max_ongoing_requests": self.max_ongoing_requests,
                         "max_queued_requests": self.max_queued_requests,
                         "health_check_period_s": self.health_check_period_s}
        if self.autoscaling:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        else:
            options["num_replicas"] = self.num_replicas
        return options


@dataclass(frozen=True)
class ServeConfig:
    """HTTP service settings: request limits, auth, timeouts and per-deployment resources."""

    max_k: int = 16
    """Largest self-consistency k a request may ask for."""
    default_k: int = 1
    """k for a request that does not give one."""
    default_method: str = "lm_guided"
    """Method for a request that does not give one: ``standard``, ``cot`` or ``lm_guided``."""
    adaptive: bool = False
    """Default adaptive self-consistency: sample in rounds and stop once more samples cannot
    change the majority answer (a request's ``adaptive`` field overrides it)."""
    adaptive_round_size: int = 2
    """Samples per round under adaptive self-consistency (>= 2: one sample would be greedy)."""
    max_question_chars: int = 2000
    """Longest question accepted (characters)."""
    max_context_chars: int = 60000
    """Longest context accepted, all paragraphs together (characters)."""
    max_paragraphs: int = 64
    """Most paragraphs an official-format context may have."""
    max_body_bytes: int = 262144
    """Largest request body accepted; larger bodies get 413."""
    request_timeout_s: float = 60.0
    """Wall-clock budget of one request; past it the request is answered 504."""
    auth_token_env: str = ""
    """Name of the environment variable that holds the bearer token every route but
    ``/healthz`` requires; empty serves without auth. The token itself never goes in a config."""
    max_new_tokens: int = 256
    """Largest ``max_tokens`` the OpenAI-compatible endpoints accept."""
    max_prompts: int = 32
    """Most prompts in one OpenAI-compatible ``/completions`` request."""
    max_top_logprobs: int = 20
    """Most alternatives per token the OpenAI-compatible endpoints return with logprobs."""
    max_request_tokens: int = 16384
    """Cost budget of one request: the most new tokens it may make the models generate, counted
    before it runs (``/completions``: prompts x n x max_tokens; ``/v1/answer``: k x (rationale +
    answer max new tokens)). Requests over it are refused up front naming the field to lower, so
    one client cannot hold a model replica for minutes."""
    max_chunk_tokens: int = 2048
    """Most rows x new tokens of one model call in a model replica. A long request's work is split
    into calls of at most this size (and at most ``generation.batch_size`` rows) that take turns
    with other requests' calls, so a short request waits for about one such call, and a
    cancelled request stops after the call that is running. Larger: more throughput per call on
    a GPU; smaller: shorter waits for short requests."""
    queue_aging_s: float = 2.0
    """Seconds a full-size model call (``max_chunk_tokens``) concedes to a tiny one in a model
    replica's queue; past them it goes before every call that arrived after it. This bounds the
    wait of large requests under a stream of small ones (``lmcot.serving.work_queue``)."""
    body_read_timeout_s: float = 10.0
    """Seconds a client has to send its whole request body; past them 408. Slow clients cannot hold
    the ingress's request slots for longer."""
    max_slow_body_readers: int = 8
    """Requests per ingress replica whose bodies may take longer than half a second to arrive at
    once; more are answered 408 at once, so slow clients leave slots for everyone else."""
    ingress: DeploymentSpec = field(
        default_factory=lambda: DeploymentSpec(num_cpus=0.1, max_ongoing_requests=64, max_batch_size=1)
    )
    """The FastAPI ingress (HTTP, validation, auth, voting): light, no model."""
    rationalizer: DeploymentSpec = field(default_factory=DeploymentSpec)
    """The small LM deployment that samples k rationales per request."""
    answerer: DeploymentSpec = field(default_factory=lambda: DeploymentSpec(max_batch_size=16, max_ongoing_requests=64))
    """The large LM deployment that answers (and serves the OpenAI-compatible API)."""

    def __post_init__(self):
        if self.max_k < 1:
            raise ValueError(f"max_k must be >= 1, got {self.max_k}")
        if not 1 <= self.default_k <= self.max_k:
            raise ValueError(f"default_k must be in 1..max_k ({self.max_k}), got {self.default_k}")
        if self.default_method not in SERVE_METHODS:
            raise ValueError(f"default_method={self.default_method!r} is not one of {', '.join(SERVE_METHODS)}")
        if self.adaptive_round_size < 2:
            raise ValueError(f"adaptive_round_size must be >= 2 (a single sample is greedy), got {self.adaptive_round_size}")
        for name in ("max_question_chars", "max_context_chars", "max_paragraphs", "max_body_bytes",
                     "max_new_tokens", "max_prompts", "max_top_logprobs", "max_request_tokens",
                     "max_chunk_tokens", "max_slow_body_readers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "body_read_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.queue_aging_s < 0:
            raise ValueError(f"queue_aging_s must be >= 0, got {self.queue_aging_s}")
        if self.auth_token_env and not self.auth_token_env.replace("_", "").isalnum():
            raise ValueError(
                f"auth_token_env={self.auth_token_env!r} must be an environment variable name "
                "(letters, digits, _), not the token itself"
            )
