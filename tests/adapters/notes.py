"""The ratio note in command-line output: tests that compare stderr exactly compare it without these lines."""

from __future__ import annotations

#: The first words of the note an image gets when it sends over 1.1 x the keep ratio (``report.ratio_note``); the
#: tiny hosts' 4 x 4 views, with padding counted in the budget and newlines never pruned, nearly always get it.
RATIO = "hero: note: effective keep ratio above the requested one: "


def others(stderr: str) -> str:
    """``stderr`` without the ratio notes, stripped."""
    return "\n".join(line for line in stderr.strip().splitlines() if not line.startswith(RATIO))
