"""Planning: memory estimates, resource arithmetic and the run plan."""
