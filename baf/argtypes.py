"""Value types for command-line flags (argparse `type=`), shared by every command and application."""

import argparse


def positive_int(text: str) -> int:
    """An int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def odd_int(text: str) -> int:
    """An odd int >= 1 (a kernel size that keeps the map size with k // 2 padding)."""
    value = positive_int(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be odd, got {value}")
    return value


def unit_float(text: str) -> float:
    """A float in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    """'8,16,32' or '2-8' (inclusive range), or a mix: '2-4,8'."""
    values: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            values.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 8,16,32 or 2-8, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return tuple(sorted(values))


def span_label(values: tuple[int, ...]) -> str:
    """'8-128' style label of an ascending value list (for checkpoint names)."""
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"
