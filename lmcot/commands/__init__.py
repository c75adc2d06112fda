"""The code of the CLI's inspection commands (``lmcot prompts``, ``lmcot compare``), beside ``lmcot.cli``.

They read the packages they inspect (datasets, models, planning, evaluation) from above, so none of
those packages imports its own inspector.
"""
