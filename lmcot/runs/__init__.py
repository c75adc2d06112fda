"""The run directory: every file a stage writes, named in one place."""
