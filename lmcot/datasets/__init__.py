"""Datasets: official-format loading, validation and context building."""
