"""CSV cells that a spreadsheet shows as text: a file name or id starting with = + - @ (or a tab or return) would
run as a formula when the CSV is opened, so it is written with a leading apostrophe."""
from __future__ import annotations

from typing import Any, Iterable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    """A text value made safe to open; numbers and everything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def row(values: Iterable[Any]) -> list[Any]:
    return [cell(value) for value in values]
