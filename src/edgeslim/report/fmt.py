"""Number formatting shared by the HTML and Markdown reports (plain text, escaped by the renderer).

Every formatter takes whatever the results hold (a number, ``None`` or something unexpected) and
returns text: ``None`` and missing values read :data:`NOT_MEASURED`, a value of the wrong type is
shown as it is rather than raising, so that one odd field never loses the whole report.
"""

from __future__ import annotations

import math
from typing import Any

#: What a missing or ``None`` value reads as in every table.
NOT_MEASURED = "not measured"


def number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` when it is missing, not a number, a bool or NaN/inf.

    Args:
        value: Anything read from the results.

    Returns:
        The float, or ``None``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _fallback(value: Any) -> str:
    """The text of a value that is not a usable number: :data:`NOT_MEASURED` for ``None``."""
    return NOT_MEASURED if value is None else str(value)


def fixed(value: Any, digits: int = 2, suffix: str = "") -> str:
    """A number with ``digits`` decimals (``3.14159`` → ``"3.14"``).

    Args:
        value: The number (or ``None``).
        digits: Decimals.
        suffix: Text appended to a number (not to :data:`NOT_MEASURED`).

    Returns:
        The text.
    """
    x = number(value)
    return _fallback(value) if x is None else f"{x:,.{digits}f}{suffix}"


def megabytes(value: Any) -> str:
    """Bytes as MB (10⁶ bytes) with two decimals (``10_820_000`` → ``"10.82"``).

    Args:
        value: A byte count (or ``None``).

    Returns:
        The text.
    """
    x = number(value)
    return _fallback(value) if x is None else f"{x / 1e6:,.2f}"


def count(value: Any) -> str:
    """A large count with a metric prefix (``1_820_000_000`` → ``"1.82 G"``, ``520_400_000`` → ``"520 M"``).

    Args:
        value: A count (parameters, MACs; or ``None``).

    Returns:
        The text.
    """
    x = number(value)
    if x is None:
        return _fallback(value)
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            scaled = x / scale
            return f"{scaled:.0f} {prefix}" if abs(scaled) >= 100 else f"{scaled:.2f} {prefix}"
    return f"{x:.0f}"


def percent(value: Any, digits: int = 2) -> str:
    """A fraction as a percentage without the sign (``0.9340`` → ``"93.40"``).

    Args:
        value: A fraction in 0..1 (or ``None``).
        digits: Decimals.

    Returns:
        The text.
    """
    x = number(value)
    return _fallback(value) if x is None else f"{100 * x:.{digits}f}"


def ratio(numerator: Any, denominator: Any, suffix: str = "×", digits: int = 2) -> str:
    """``numerator / denominator`` with ``digits`` decimals and ``suffix`` (``20.0, 5.4`` → ``"3.70×"``).

    Args:
        numerator: The dividend (or ``None``).
        denominator: The divisor (or ``None``; zero also reads :data:`NOT_MEASURED`).
        suffix: Text after the number.
        digits: Decimals.

    Returns:
        The text.
    """
    a, b = number(numerator), number(denominator)
    if a is None or b is None or b == 0:
        return NOT_MEASURED
    return f"{a / b:.{digits}f}{suffix}"


def yes_no(value: Any) -> str:
    """``True`` → ``"yes"``, ``False`` → ``"no"``, ``None`` → :data:`NOT_MEASURED`.

    Args:
        value: A flag.

    Returns:
        The text.
    """
    if value is None:
        return NOT_MEASURED
    return "yes" if value else "no"


def text(value: Any) -> str:
    """A free-text field: ``None`` → ``""`` (an empty cell, not "not measured").

    Args:
        value: A string (or anything).

    Returns:
        The text.
    """
    return "" if value is None else str(value)
