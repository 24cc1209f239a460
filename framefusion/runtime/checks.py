"""The checks of the library's numeric settings (apply_framefusion's arguments, the reduction methods' objects): a
ValueError naming the setting, its allowed range and the value given."""

from __future__ import annotations


def check_number(name: str, value: object, *, low: float, high: float, low_inclusive: bool = True,
                 high_inclusive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a number, got {value!r}")
    above_low = value >= low if low_inclusive else value > low
    below_high = value <= high if high_inclusive else value < high
    if not (above_low and below_high):
        opening, closing = "[" if low_inclusive else "(", "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in {opening}{low}, {high}{closing}, got {value}")


def check_whole_number(name: str, value: object, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
