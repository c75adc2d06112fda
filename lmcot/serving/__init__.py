"""Serving concerns that need no Ray: the model work queue, and every rule of the HTTP service.

The work queue (:mod:`~lmcot.serving.work_queue`, :mod:`~lmcot.serving.model_queue`) is the one
mechanism that batches a model's calls for every caller (Serve replicas and the refinement judge
actors). The rest is the Ray-free half of the Serve graph, each concern in its module and tested
without a cluster: the error shape (:mod:`~lmcot.serving.errors`), the ingress app's handlers and
body reading (:mod:`~lmcot.serving.api`), hostile input (:mod:`~lmcot.serving.edges`), the errors
Serve's proxy answers itself (:mod:`~lmcot.serving.proxy`), auth (:mod:`~lmcot.serving.auth`),
token budgets (:mod:`~lmcot.serving.budget`), request parsing (:mod:`~lmcot.serving.validation`),
``/v1/answer`` (:mod:`~lmcot.serving.answer`), the OpenAI wire format
(:mod:`~lmcot.serving.openai_api`), a model replica's calls and refusals
(:mod:`~lmcot.serving.replica`), readiness (:mod:`~lmcot.serving.readiness`), Serve's logs
(:mod:`~lmcot.serving.logs`) and the Serve config's ``args`` (:mod:`~lmcot.serving.app_args`).
The deployments themselves are Ray code: :mod:`lmcot.stages.serve` and :mod:`lmcot.stages.serve_worker`.
"""
