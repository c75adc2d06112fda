"""Evaluation: metrics, the evaluator loop, paired statistics and the report."""
