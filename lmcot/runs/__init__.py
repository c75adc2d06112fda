"""The run directory: every file a stage writes is named here (``rundir``); the step records
(``step``), the JSON Lines logs (``jsonl``), the evaluation folders (``evals``) and the shard
folders (``shards``) are also read and written only here."""
