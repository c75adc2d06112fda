"""Ray Serve deployment of the small-LM -> large-LM graph."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """HTTP service settings."""

    max_k: int = 16
    """Largest self-consistency k a request may ask for."""
