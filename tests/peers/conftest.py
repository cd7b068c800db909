"""Tests of the optional peers' wrappers: collected only where the peer's package imports.

The peers are installed in a separate environment (they pin their own dependencies: see the README's ``peers``
section), so the default test run has none of them. A test file here is not skipped there, it is not collected:
``collect_ignore`` names the files whose package is missing, and ``make test-peers`` runs them in the peers
environment, where every assert runs.
"""
from __future__ import annotations

import importlib.util

# test file -> the package it needs
NEEDS = {"test_nncodec_peer.py": "nncodec", "test_nncodec_rows.py": "nncodec"}

collect_ignore = [f for f, mod in NEEDS.items() if importlib.util.find_spec(mod) is None]
