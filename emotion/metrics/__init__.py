"""`evaluate` metric modules kept in the package and loaded by path (metric scripts on the hub are unreachable offline)."""
from __future__ import annotations

from pathlib import Path

EXPRESSION_METRICS = Path(__file__).with_name("expression_metrics.py")
