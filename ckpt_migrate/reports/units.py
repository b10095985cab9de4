"""Human-readable sizes for command output."""

from __future__ import annotations


def human_size(count: float) -> str:
    """Bytes as a short human string (``1.2 MB``), decimal units as file managers show them."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"
