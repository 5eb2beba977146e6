"""Shared fixtures. Installed plugins stay visible; tests that need a clean host set MYRIAD_LOAD_PLUGINS."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")
