"""The plausibility limits (``vla-run --limits enforce|warn|off``): what the loop does with a decoded
trajectory that breaks ``--max-curvature``, ``--max-accel`` or ``--max-speed``.

- ``enforce`` (default): the tick falls back, and its reason names the limit and the value;
- ``warn``: the model's trajectory is published (``ok`` when all else is), with a ``warning``
  naming the limit and the value: bring-up of an untrained or unfamiliar model, to see its raw
  output on the road without a fault hiding it;
- ``off``: no limits are checked at all.

In every mode a non-finite output (NaN, inf) falls back: it is never driveable. Pure functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vla.kernels.decode import NONFINITE, DecodedTrajectory, LimitBreach

from ..errors import VlaError

MODES = ("enforce", "warn", "off")
#: The kernel's limit argument -> the ``vla-run`` flag a user sets it with.
FLAGS = {"max_curvature": "--max-curvature", "max_accel": "--max-accel", "max_speed": "--max-speed"}


def check_mode(mode: str) -> str:
    """``mode`` if it is one of ``MODES``, else a one-line error saying which are."""
    if mode not in MODES:
        raise VlaError(f"limits mode {mode!r}: use enforce (the default), warn (publish and warn, for bring-up) "
                       "or off")
    return mode


def decoder_limits(mode: str, max_curvature: float, max_accel: float, max_speed: float) -> dict[str, float]:
    """The limits the decode kernel checks: the configured ones, or none (infinite) with ``off``.
    Infinite limits are never exceeded by a finite value; non-finite values are flagged apart."""
    if mode == "off":
        return dict.fromkeys(FLAGS, math.inf)
    return {"max_curvature": max_curvature, "max_accel": max_accel, "max_speed": max_speed}


def describe_breaches(breaches: tuple[LimitBreach, ...]) -> str:
    """A reason that names each broken limit by its flag, then the values:
    ``implausible trajectory beyond --max-curvature: curvature 0.52 1/m > 0.3 at t=1.2 s``.
    The text before ':' names only flags, so counts by reason kind (``health.reason_kind``) tell
    the limits apart without a new kind per value."""
    flags = ", ".join(FLAGS[b.limit] for b in breaches)
    return f"implausible trajectory beyond {flags}: " + "; ".join(b.text for b in breaches)


@dataclass(frozen=True)
class Judgement:
    """What a decoded trajectory means for the tick: ``usable`` (publish it, commit state),
    ``problem`` (why it falls back, when not usable), ``warning`` (published despite a limit)."""

    usable: bool
    problem: str | None = None
    warning: str | None = None


USABLE = Judgement(True)  # the common case, made once: judge_decoded runs every tick


def judge_decoded(decoded: DecodedTrajectory, mode: str) -> Judgement:
    """Apply ``mode`` to the decode kernel's verdict (the kernel was given ``decoder_limits``)."""
    if decoded.ok:
        return USABLE
    if not decoded.only_limits:  # a non-finite value (or a clamped time): never driveable, whatever the mode
        kind = "non-finite output" if decoded.verdict & NONFINITE else "implausible trajectory"
        return Judgement(False, f"{kind}: {decoded.problem}")
    reason = describe_breaches(decoded.breaches)
    if mode == "enforce":
        return Judgement(False, reason)
    if mode == "warn":
        return Judgement(True, warning=reason)
    return USABLE  # off: the kernel checked no limits; a caller's own limits are ignored too
