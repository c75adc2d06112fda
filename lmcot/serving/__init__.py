"""Serving concerns that need no Ray: the large LM's work queue and the rules at the HTTP edge.

The work queue (:mod:`~lmcot.serving.work_queue`, :mod:`~lmcot.serving.model_queue`) is the one
mechanism that batches a model's calls for every caller (Serve replicas and the refinement judge
actors); :mod:`~lmcot.serving.edges` holds the hostile-input rules of the HTTP edge (request ids,
headers, slow bodies) so they are tested without a cluster.
"""
