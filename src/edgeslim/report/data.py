"""Reading the results dict: the one required key, optional sections, tolerant accessors.

The results are plain data (``results.json``). Only ``rows`` is required; every other section may
be missing, and any value may be ``None``. These helpers hand the renderers lists of dicts and
dicts only, so that the renderers never test types themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeslim.errors import EdgeslimError


class ReportDataError(EdgeslimError, ValueError):
    """The results dict cannot be rendered (it is not a dict, or ``rows`` is missing or not a list)."""


def check_results(results: Any) -> Mapping[str, Any]:
    """Check the one thing a report needs: a dict with a ``rows`` list.

    Args:
        results: The results dict (as read from ``results.json``).

    Returns:
        ``results`` itself.

    Raises:
        ReportDataError: ``results`` is not a dict, or has no ``rows`` list.
    """
    if not isinstance(results, Mapping):
        raise ReportDataError(f"the results must be a dict (results.json's object), got {type(results).__name__}")
    rows = results.get("rows")
    if not isinstance(rows, list):
        got = "nothing" if rows is None else type(rows).__name__
        raise ReportDataError(
            f"the results have no 'rows' list (got {got}); every report needs at least the variants table"
        )
    return results


def records(value: Any) -> list[Mapping[str, Any]]:
    """The dict items of a list section (``rows``, ``layers``, ``steps``, ``front`` ...).

    Args:
        value: A list (or ``None``, or anything else).

    Returns:
        The items that are dicts; an empty list when ``value`` is not a list.
    """
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a dict, else an empty dict (a missing section).

    Args:
        value: A dict section (``search``, ``budget``, ``latency_ms`` ...) or ``None``.

    Returns:
        A dict.
    """
    return value if isinstance(value, Mapping) else {}


def runtimes(rows: list[Mapping[str, Any]]) -> list[str]:
    """Every ``runtime@target`` key of the rows' ``latency_ms``, in first-seen order.

    Args:
        rows: The variant rows.

    Returns:
        The keys (the latency columns of the table).
    """
    keys: dict[str, None] = {}
    for row in rows:
        for key in mapping(row.get("latency_ms")):
            keys[str(key)] = None
    return list(keys)


def latency(row: Mapping[str, Any], runtime: str) -> Any:
    """The latency (ms) of ``row`` in ``runtime`` (``None`` when not measured).

    Args:
        row: A variant row.
        runtime: A ``runtime@target`` key.

    Returns:
        The value as stored (a number, ``None`` or whatever the results hold).
    """
    return mapping(row.get("latency_ms")).get(runtime)


def search_latency(point: Mapping[str, Any]) -> Any:
    """The latency of a search point: measured when there is one, else predicted.

    Args:
        point: A ``search.front`` or ``search.trace`` item.

    Returns:
        The value (or ``None``).
    """
    measured = point.get("measured_ms")
    return measured if measured is not None else point.get("predicted_ms")
