"""Exact decimal text for scaled integers, in the number spellings Upbit sends.

The simulator keeps every price and size as an integer count of ``10**-scale``
units, so nothing ever goes through a binary float. These functions spell such a
value the ways real frames do: ``137002000``, ``109847000.0``,
``31883000.00000000``, ``1.16539E8``, ``7.9276E-4``.
"""

from __future__ import annotations

from decimal import Decimal

SCALE = 8
UNIT = 10**SCALE


def _split(value: int, scale: int) -> tuple[str, str, str]:
    sign = "-" if value < 0 else ""
    digits = str(-value if value < 0 else value)
    if scale == 0:
        return sign, digits, ""
    if len(digits) <= scale:
        digits = digits.rjust(scale + 1, "0")
    return sign, digits[:-scale], digits[-scale:]


def plain(value: int, scale: int = SCALE) -> str:
    """Shortest plain decimal: ``137002000``, ``0.0055433``."""
    if value < 0:
        return "-" + plain(-value, scale)
    whole, frac = divmod(value, 10**scale)
    if not frac:
        return str(whole)
    # frac != 0, so stripping zeros never reaches the decimal point.
    return f"{whole}.{frac:0{scale}d}".rstrip("0")


def dotted(value: int, scale: int = SCALE) -> str:
    """Shortest plain decimal that always has a fraction: ``109847000.0``."""
    if value < 0:
        return "-" + dotted(-value, scale)
    whole, frac = divmod(value, 10**scale)
    if not frac:
        return f"{whole}.0"
    return f"{whole}.{frac:0{scale}d}".rstrip("0")


def fixed(value: int, scale: int = SCALE, places: int = SCALE) -> str:
    """All ``places`` fractional digits, trailing zeros kept: ``31883000.00000000``."""
    if places < scale:
        raise ValueError(f"fixed() cannot drop digits: places {places} < scale {scale}")
    if value < 0:
        return "-" + fixed(-value, scale, places)
    whole, frac = divmod(value, 10**scale)
    if not places:
        return str(whole)
    return f"{whole}.{frac * 10 ** (places - scale):0{places}d}"


def java(value: int, scale: int = SCALE) -> str:
    """Java ``Double.toString`` spelling of an exact value.

    Plain with at least one fractional digit in [1e-3, 1e7); otherwise
    ``d.dddE<exp>`` (``1.16539E8``, ``9.9E-7``, ``5.0E-4``). The digits are the
    exact decimal digits of the value, never a float approximation.
    """
    if value == 0:
        return "0.0"
    sign, whole, frac = _split(value, scale)
    magnitude = -value if value < 0 else value
    if 10**scale // 1000 <= magnitude < 10_000_000 * 10**scale:
        return f"{sign}{whole}.{frac.rstrip('0') or '0'}"
    if whole != "0":
        exponent = len(whole) - 1
        digits = (whole + frac).rstrip("0")
    else:
        stripped = frac.lstrip("0")
        exponent = -(len(frac) - len(stripped) + 1)
        digits = stripped.rstrip("0")
    return f"{sign}{digits[0]}.{digits[1:] or '0'}E{exponent}"


def to_decimal(value: int, scale: int = SCALE) -> Decimal:
    return Decimal(value).scaleb(-scale)


def from_decimal(value: Decimal | str, scale: int = SCALE) -> int:
    """The scaled integer of ``value``; raises ValueError if it has more digits than ``scale``."""
    number = Decimal(value)
    scaled = number.scaleb(scale)
    if not number.is_finite() or scaled != scaled.to_integral_value():
        raise ValueError(f"{value} is not a finite number with at most {scale} decimals")
    return int(scaled)
