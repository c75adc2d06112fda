"""Evaluation: the evaluator loop, paired statistics, the paper's claims and the report (answers are scored by :mod:`lmcot.scoring`)."""
