"""Unit conversions that hospital exports need, as exact affine maps ``y = a * x + b``.

Only conversions with a published, fixed factor are listed, so that harmonisation undoes an
export to floating-point precision:

* glucose, mg/dL <-> mmol/L: 1 mmol/L = 18.0156 mg/dL (molar mass of glucose 180.156 g/mol);
* HbA1c, % (NGSP/DCCT) <-> mmol/mol (IFCC): ``IFCC = 10.929 * (NGSP - 2.15)``, the
  IFCC-NGSP master equation (Hoelzel et al., Clin. Chem. 50:166, 2004);
* pressure, mmHg <-> kPa: 1 mmHg = 0.133322 kPa;
* length, mm <-> cm <-> m; mass, kg <-> lb (1 lb = 0.45359237 kg); time, years <-> months.

>>> round(convert(126.0, "mg/dL", "mmol/L", quantity="glucose"), 3)
6.994
>>> round(convert(6.5, "%", "mmol/mol", quantity="hba1c"), 1)
47.5
"""

from __future__ import annotations

import numpy as np

from securefed.errors import ConfigurationError

__all__ = ["convert", "known_conversions", "normalise_unit", "GLUCOSE_MG_DL_PER_MMOL_L"]

GLUCOSE_MG_DL_PER_MMOL_L = 18.0156

# (quantity or None, from, to) -> (a, b) with to = a * from + b
_AFFINE: dict[tuple[str | None, str, str], tuple[float, float]] = {
    ("glucose", "mg/dL", "mmol/L"): (1.0 / GLUCOSE_MG_DL_PER_MMOL_L, 0.0),
    ("hba1c", "%", "mmol/mol"): (10.929, -10.929 * 2.15),
    (None, "mmHg", "kPa"): (0.133322, 0.0),
    (None, "mm", "cm"): (0.1, 0.0),
    (None, "cm", "m"): (0.01, 0.0),
    (None, "mm", "m"): (0.001, 0.0),
    (None, "kg", "lb"): (1.0 / 0.45359237, 0.0),
    (None, "years", "months"): (12.0, 0.0),
}

_ALIASES = {"mm hg": "mmHg", "mmhg": "mmHg", "mg/dl": "mg/dL", "mmol/l": "mmol/L",
            "year": "years", "yr": "years", "month": "months", "kpa": "kPa"}


def normalise_unit(unit: str | None) -> str | None:
    """Canonical spelling of a unit (``"mm Hg"`` -> ``"mmHg"``); unknown spellings unchanged."""
    if unit is None:
        return None
    return _ALIASES.get(unit.strip().lower(), unit.strip())


def _affine(from_unit: str, to_unit: str, quantity: str | None) -> tuple[float, float]:
    q = quantity.lower() if quantity else None
    for key in ((q, from_unit, to_unit), (None, from_unit, to_unit)):
        if key in _AFFINE:
            return _AFFINE[key]
    for key in ((q, to_unit, from_unit), (None, to_unit, from_unit)):
        if key in _AFFINE:
            a, b = _AFFINE[key]
            return 1.0 / a, -b / a
    raise ConfigurationError(
        f"no conversion from {from_unit!r} to {to_unit!r}"
        + (f" for {quantity!r}" if quantity else "")
        + f"; known: {known_conversions()}"
    )


def convert(values, from_unit: str | None, to_unit: str | None, *, quantity: str | None = None):
    """Convert ``values`` (scalar or array; NaN stays NaN) from one unit to another."""
    f, t = normalise_unit(from_unit), normalise_unit(to_unit)
    if f == t:
        return values
    if f is None or t is None:
        raise ConfigurationError(f"cannot convert between unit {from_unit!r} and {to_unit!r}")
    a, b = _affine(f, t, quantity)
    if np.isscalar(values):
        return a * float(values) + b
    return a * np.asarray(values, dtype=np.float64) + b


def known_conversions() -> list[str]:
    return [f"{q + ': ' if q else ''}{f} <-> {t}" for (q, f, t) in _AFFINE]
