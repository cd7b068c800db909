"""lowrank-deploy: low-rank factorization pipeline for edge deployment of CNNs."""
from __future__ import annotations

__version__ = "0.1.0"
