"""How long, in the words progress lines use."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """E.g. "42 s", "7 min 05 s", "2 h 14 min"."""
    minutes, rest = divmod(round(seconds), 60)
    if minutes >= 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"
