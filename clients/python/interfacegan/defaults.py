"""The one table of edit defaults, shared by the SDK, the editor and the boundary service (protos quote it)."""

from __future__ import annotations

import numpy as np

#: Distances an edit runs through when it names none: the reference's edit.py, -3 .. +3 in 10 steps.
START = -3.0
END = 3.0
#: `steps` 0 in a request means STEPS; with `start` and `end` both 0 as well it means START .. END.
STEPS = 10
#: Most distances one edit may ask for.
MAX_STEPS = 256
#: Largest |start| or |end| accepted.
MAX_DISTANCE = 1e4
#: How start and end are read when a request leaves the mode unspecified: offsets t added as code + t n.
MODE = "relative"


def resolve(start: float, end: float, steps: int) -> tuple[float, float, int]:
    """Fills a request's unset fields (proto3 zeros) from the table: steps 0 -> STEPS, 0/0/0 -> START..END."""
    if steps == 0:
        if start == 0 and end == 0:
            start, end = START, END
        steps = STEPS
    return float(start), float(end), int(steps)


def distances(start: float, end: float, steps: int) -> np.ndarray:
    """The distances of one edit: `steps` values evenly spaced from start to end, both included.

    This is the reference's np.linspace(start, end, steps), so steps = 1 gives `start` alone. To edit by
    one distance d, give start = end = d (the SDK's "ATTR:d").
    """
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be within 1 .. {MAX_STEPS}, got {steps}")
    return np.linspace(start, end, steps, dtype=np.float64)


#: Identity distance under which two faces are one person (dlib's face-recognition ResNet; the scorer's
#: IdentityReply.same_person_threshold).
SAME_PERSON = 0.6


# -- target edits (AttributeEdit.delta / to) and automatic holding ------------------------------------------

#: How close a target edit must come to count as reached, per unit of the scorer's AttributeInfo.
TOLERANCE = {"years": 2.0, "degrees": 3.0, "probability": 0.05, "ratio": 0.05}
#: hold=auto holds another attribute when the edit moves it by more than this, per unit.
HOLD_THRESHOLD = {"years": 3.0, "degrees": 5.0, "probability": 0.15, "ratio": 0.05}
#: Largest |distance| a target search tries when the request says 0.
TARGET_MAX_DISTANCE = 8.0
#: Search rounds when the request says 0, and the most it may ask for.
TARGET_ROUNDS = 5
MAX_TARGET_ROUNDS = 8
#: Unit suffixes of the edit grammar ("age:+10y", "yaw:+15deg") -> the scorer's unit names.
UNIT_SUFFIXES = {"y": "years", "yr": "years", "yrs": "years", "years": "years", "deg": "degrees",
                 "degrees": "degrees", "°": "degrees", "p": "probability", "prob": "probability",
                 "probability": "probability", "r": "ratio", "ratio": "ratio"}


def per_unit(table: dict[str, float], unit: str, low: float, high: float) -> float:
    """A table's value for `unit`; for other units 5% of the attribute's range (0.05 when it is unbounded)."""
    if unit in table:
        return table[unit]
    return 0.05 * (high - low) if np.isfinite(high - low) and high > low else 0.05
