"""Vehicle-state (ego) input for ``vla-run --ego SPEC``: where speed, acceleration and yaw rate come from.

The model's ego input is dead-reckoned from these readings (``ego.py``), so a wrong or old reading
bends the predicted path as surely as a wrong image. Every kind below therefore says *when* its
reading was valid (``EgoReading.time``, ``time.monotonic()`` seconds) and the loop decides with
``ego_staleness`` whether it is still usable. One grammar, one interface::

    udp://HOST:PORT                              listen for vla.ego/1 JSON datagrams (port 0: any free)
    constant://?speed=10&yaw_rate=0&accel=0      a fixed state, always fresh (every value defaults to 0)
    profile://[?speed_scale=S]                   a deterministic synthetic drive, always fresh
    camera                                       (default) the state the camera source attaches to frames

UDP message (one datagram, a UTF-8 JSON object)::

    {"schema": "vla.ego/1", "speed": 12.3, "yaw_rate": 0.02, "accel": -0.4, "steering": 0.05, "seq": 1841}

``speed`` (m/s) and ``yaw_rate`` (rad/s, positive to the left) are required; ``accel`` (m/s²,
longitudinal, default 0), ``steering`` (rad, positive to the left) and ``seq`` (an integer the
sender increments per message) are optional; ``schema``, when present, must be ``vla.ego/1``.

Why receipt time and not a sender timestamp: the sender's clock is not ours (another ECU, another
process with its own epoch, no shared PTP in general), so a sender time could not be compared with
``time.monotonic()`` without a synchronisation protocol. On a vehicle network the transit time is
well under a millisecond, so the moment the datagram is read is the best estimate of when the
state was valid that this machine can verify.

Why reject rather than clamp: a reading that is not JSON, lacks a field, is not finite or is
physically implausible (|speed| > 100 m/s, |yaw_rate| > 3 rad/s, |accel| > 20 m/s²) means the
sender is broken; clamping would feed the model a made-up state. Rejected messages are counted
(``rejected``, ``last_error``) and the previous valid reading stays, ageing until the loop calls
it stale. Datagrams can be reordered, so a ``seq`` not newer than the newest accepted one is
rejected too, unless it looks like a sender restart (see ``UdpEgoInput``).
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from ..errors import VlaError
from .sources.base import EgoState

SCHEMA = "vla.ego/1"
GRAMMAR = ("udp://HOST:PORT, constant://?speed=V&yaw_rate=R&accel=A, profile://[?speed_scale=S] "
           "or camera (the default)")

#: Plausibility limits: beyond any road vehicle, so only a broken sender exceeds them.
MAX_SPEED = 100.0  # m/s (360 km/h)
MAX_YAW_RATE = 3.0  # rad/s
MAX_ACCEL = 20.0  # m/s² (2 g)
MAX_STEERING = 10.0  # rad: beyond a steering wheel's lock (about 1.5 turns each way)

_LIMITS = {"speed": (MAX_SPEED, "m/s"), "yaw_rate": (MAX_YAW_RATE, "rad/s"), "accel": (MAX_ACCEL, "m/s²"),
           "steering": (MAX_STEERING, "rad")}


@dataclass(frozen=True)
class EgoReading:
    """The vehicle state and when it was valid."""

    speed: float  # m/s
    accel: float  # m/s², longitudinal
    yaw_rate: float  # rad/s, positive to the left
    steering: float | None  # rad, positive to the left; None when the source does not report it
    time: float  # time.monotonic() seconds when the state was valid (or received)


@dataclass(frozen=True)
class EgoMessage:
    """The fields of one valid vla.ego/1 message, before it is given a time."""

    speed: float
    accel: float
    yaw_rate: float
    steering: float | None
    seq: int | None


# ---- pure functions ----------------------------------------------------------------------------------
def _number(value: object, key: str) -> float:
    """``value`` of field ``key`` as a finite, plausible float; ValueError naming the problem."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"field '{key}' is not a number ({json.dumps(value)[:40]})")
    try:
        x = float(value)
    except OverflowError:  # an integer too large for a float
        x = math.inf
    if not math.isfinite(x):
        raise ValueError(f"field '{key}' is not finite ({x})")
    limit, unit = _LIMITS[key]
    if abs(x) > limit:
        raise ValueError(f"implausible {key} {x:g} {unit} (limit ±{limit:g} {unit})")
    return x


def parse_ego_message(data: bytes) -> EgoMessage:
    """Validate one datagram; raises ValueError with a one-line reason for anything unusable."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    # Issue 19 (found by tests/test_parsers_properties.py): json raises RecursionError for nesting deeper than
    # the interpreter's limit (~1 KB of '[' fits one datagram) and a plain ValueError for an integer of more
    # than 4300 digits; uncaught, the first ended the receiver thread and left the ego input silently stale.
    except RecursionError:
        raise ValueError("not usable JSON (nested too deeply)") from None
    except ValueError:
        raise ValueError("not usable JSON (a number with too many digits)") from None
    if not isinstance(obj, dict):
        raise ValueError(f"not a JSON object (got {type(obj).__name__})")
    schema = obj.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise ValueError(f"unsupported schema {json.dumps(schema)[:40]} (expected \"{SCHEMA}\")")
    for key in ("speed", "yaw_rate"):
        if key not in obj:
            raise ValueError(f"missing field '{key}'")
    speed, yaw_rate = _number(obj["speed"], "speed"), _number(obj["yaw_rate"], "yaw_rate")
    # Optional fields: absent and null mean the same.
    accel = _number(obj["accel"], "accel") if obj.get("accel") is not None else 0.0
    steering = _number(obj["steering"], "steering") if obj.get("steering") is not None else None
    seq = obj.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise ValueError(f"field 'seq' is not an integer ({json.dumps(seq)[:40]})")
    return EgoMessage(speed=speed, accel=accel, yaw_rate=yaw_rate, steering=steering, seq=seq)


def ego_staleness(reading: EgoReading | None, now: float, stale_ms: float) -> str | None:
    """Why ``reading`` cannot be used at ``now`` (monotonic s), or None when it is fresh.

    Exactly ``stale_ms`` old is still fresh; a reading from the future (a frame captured after
    ``now`` was taken) counts as fresh.
    """
    if reading is None:
        return "no ego message yet"
    age_ms = (now - reading.time) * 1000.0
    if age_ms > stale_ms:
        return f"ego stale: last message {age_ms:.0f} ms ago (limit {stale_ms:g} ms)"
    return None


#: The synthetic drive, one 40 s cycle (seconds, speed as a fraction of the cruise speed V):
#:   0-10 accelerate 0 -> V (half-cosine: accel rises and falls smoothly, peak V*pi/20 m/s²)
#:  10-15 cruise; 15-25 a gentle left curve (curvature sin²-shaped, peak 1/200 m⁻¹) at V;
#:  25-30 cruise; 30-38 brake V -> 0 (half-cosine, peak V*pi/16 m/s²); 38-40 stand still.
PROFILE_PERIOD_S = 40.0
PROFILE_CRUISE = 12.0  # m/s, V
PROFILE_CURVATURE = 1.0 / 200.0  # 1/m at the curve's apex: 0.06 rad/s at 12 m/s


def profile_state(t: float, speed_scale: float = 1.0) -> tuple[float, float, float]:
    """(speed m/s, accel m/s², yaw_rate rad/s) of the synthetic drive ``t`` seconds after its start.

    A pure function of ``t``: ``accel`` is the exact derivative of ``speed``, and ``yaw_rate`` is
    ``speed * curvature``, so scaling the speed keeps the same path. Before the start: standing.
    """
    if t < 0:
        return 0.0, 0.0, 0.0
    v = PROFILE_CRUISE * speed_scale
    u = t % PROFILE_PERIOD_S
    curvature = 0.0
    if u < 10.0:
        speed, accel = 0.5 * v * (1.0 - math.cos(math.pi * u / 10.0)), v * math.pi / 20.0 * math.sin(math.pi * u / 10.0)
    elif u < 30.0:
        speed, accel = v, 0.0
        if 15.0 <= u < 25.0:
            curvature = PROFILE_CURVATURE * math.sin(math.pi * (u - 15.0) / 10.0) ** 2
    elif u < 38.0:
        w = math.pi * (u - 30.0) / 8.0
        speed, accel = 0.5 * v * (1.0 + math.cos(w)), -v * math.pi / 16.0 * math.sin(w)
    else:
        speed, accel = 0.0, 0.0
    return speed, accel, speed * curvature


# ---- the interface -----------------------------------------------------------------------------------
class EgoInput(ABC):
    """One source of vehicle state. ``received`` counts messages that arrived (valid or not),
    ``rejected`` those discarded, ``last_error`` says why the latest one was."""

    spec: str

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.received = 0
        self.rejected = 0
        self.last_error: str | None = None

    @abstractmethod
    def latest(self, now: float) -> EgoReading | None:
        """The newest valid reading (None before any); never blocks. ``now`` is time.monotonic()."""

    @abstractmethod
    def describe(self) -> str:
        """One line for the start-up banner."""

    def close(self) -> None:
        """Release what the input holds; safe to call twice. Nothing to release by default."""
        return None

    def __enter__(self) -> EgoInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ConstantEgoInput(EgoInput):
    """A fixed state, always fresh: for benches and for a vehicle parked on a dyno."""

    def __init__(self, spec: str, speed: float = 0.0, accel: float = 0.0, yaw_rate: float = 0.0,
                 steering: float | None = None) -> None:
        super().__init__(spec)
        self.speed, self.accel, self.yaw_rate, self.steering = speed, accel, yaw_rate, steering

    def latest(self, now: float) -> EgoReading:
        return EgoReading(self.speed, self.accel, self.yaw_rate, self.steering, now)

    def describe(self) -> str:
        return (f"constant: speed {self.speed:g} m/s, accel {self.accel:g} m/s², "
                f"yaw rate {self.yaw_rate:g} rad/s")


class ProfileEgoInput(EgoInput):
    """``profile_state`` of the time since this input was opened, always fresh."""

    def __init__(self, spec: str, speed_scale: float = 1.0, start: float | None = None) -> None:
        super().__init__(spec)
        self.speed_scale = speed_scale
        self.start = time.monotonic() if start is None else start

    def latest(self, now: float) -> EgoReading:
        speed, accel, yaw_rate = profile_state(now - self.start, self.speed_scale)
        return EgoReading(speed, accel, yaw_rate, None, now)

    def describe(self) -> str:
        return (f"profile: synthetic drive, {PROFILE_PERIOD_S:g} s cycle, cruise "
                f"{PROFILE_CRUISE * self.speed_scale:g} m/s")


class FrameEgoInput(EgoInput):
    """The state the camera source attaches to each frame (the synthetic rig knows it exactly).

    The loop calls ``push(frame.ego, frame.capture_time)`` once per tick; a camera that knows no
    ego state (a real one) pushes None, which leaves ``latest`` at None: "no ego message yet".
    """

    def __init__(self, spec: str = "camera") -> None:
        super().__init__(spec)
        self._reading: EgoReading | None = None

    def push(self, ego_state: EgoState | None, capture_time: float) -> None:
        if ego_state is None:
            return
        if self._reading is not None and capture_time == self._reading.time:
            return  # the same frame again (no new frame this tick): not a new message
        self.received += 1
        try:
            speed = _number(ego_state.speed, "speed")
            accel = _number(ego_state.accel, "accel")
            yaw_rate = _number(ego_state.yaw_rate, "yaw_rate")
        except ValueError as exc:
            self.rejected += 1
            self.last_error = f"camera ego state: {exc}"
            return
        self._reading = EgoReading(speed, accel, yaw_rate, None, capture_time)

    def latest(self, now: float) -> EgoReading | None:
        return self._reading

    def describe(self) -> str:
        return "camera: the ego state the camera source attaches to each frame"


class UdpEgoInput(EgoInput):
    """Listens on ``udp://HOST:PORT``; a daemon thread keeps only the newest valid reading.

    Ordering: with ``seq``, a message not newer than the newest accepted one is rejected, unless
    the sender evidently restarted: the newest accepted reading is older than ``restart_after_s``
    (reordering happens within milliseconds) or ``seq`` went back by more than ``REORDER_WINDOW``.
    So a restarted sender is followed at once or, at worst, after ``restart_after_s``.

    The reading is an immutable object swapped in by one assignment, so ``latest`` needs no lock;
    the counters are written by the receiver thread only.
    """

    REORDER_WINDOW = 1000
    POLL_S = 0.1  # how long the receiver blocks before checking for close()

    def __init__(self, spec: str, host: str, port: int, restart_after_s: float = 1.0) -> None:
        super().__init__(spec)
        try:
            family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                                       flags=socket.AI_PASSIVE)[0]
        except socket.gaierror as exc:
            raise VlaError(f"--ego {spec}: cannot resolve {host} ({exc.strerror}); use an IP address") from None
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.bind(addr)
        except OSError as exc:
            self._sock.close()
            raise VlaError(f"--ego {spec}: cannot bind {host}:{port} ({exc.strerror or exc}); "
                           "choose another port or a local address") from None
        self._sock.settimeout(self.POLL_S)
        self.host, self.port = host, self._sock.getsockname()[1]
        self.restart_after_s = restart_after_s
        self._reading: EgoReading | None = None
        self._seq: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name=f"vla-ego-udp-{self.port}", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self._sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError as exc:  # closed under us, or a transient error: never let the thread die
                if self._stop.is_set():
                    return
                self.last_error = f"receive failed: {exc.strerror or exc}"
                self._stop.wait(self.POLL_S)
                continue
            self.accept(data, time.monotonic(), f"{sender[0]}:{sender[1]}")

    def accept(self, data: bytes, received_at: float, sender: str = "?") -> bool:
        """Validate one datagram received at ``received_at``; True when it became the newest reading."""
        self.received += 1
        try:
            msg = parse_ego_message(data)
            if msg.seq is not None and self._seq is not None and msg.seq <= self._seq:
                last = self._reading.time if self._reading is not None else received_at
                restarted = msg.seq < self._seq - self.REORDER_WINDOW or received_at - last > self.restart_after_s
                if not restarted:
                    raise ValueError(f"out-of-order seq {msg.seq} (newest {self._seq})")
        except ValueError as exc:
            self.rejected += 1
            self.last_error = f"{exc} (from {sender})"
            return False
        if msg.seq is not None:
            self._seq = msg.seq
        self._reading = EgoReading(msg.speed, msg.accel, msg.yaw_rate, msg.steering, received_at)
        return True

    def latest(self, now: float) -> EgoReading | None:
        return self._reading

    def describe(self) -> str:
        return f"udp: listening on {self.host}:{self.port} for {SCHEMA} JSON datagrams"

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sock.close()


# ---- the grammar -------------------------------------------------------------------------------------
def _query(spec: str, query: str, allowed: tuple[str, ...]) -> dict[str, float]:
    """Numeric query parameters; a VlaError for unknown, repeated or non-numeric ones."""
    out: dict[str, float] = {}
    try:
        pairs = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise VlaError(f"--ego {spec}: malformed query; expected key=value pairs joined by '&'") from None
    for key, values in pairs.items():
        if key not in allowed:
            raise VlaError(f"--ego {spec}: unknown parameter '{key}' (allowed: {', '.join(allowed)})")
        if len(values) != 1:
            raise VlaError(f"--ego {spec}: parameter '{key}' given {len(values)} times")
        try:
            x = float(values[0])
        except ValueError:
            x = math.nan
        if not math.isfinite(x):
            raise VlaError(f"--ego {spec}: {key}={values[0]!r} is not a finite number")
        out[key] = x
    return out


def open_ego_input(spec: str) -> EgoInput:
    """An ``EgoInput`` for ``spec``; a VlaError naming the grammar for anything else."""
    if spec == "camera":
        return FrameEgoInput(spec)
    parts = urlsplit(spec)
    scheme = parts.scheme if "://" in spec else ""
    if scheme == "udp":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or parts.path or parts.query:
            raise VlaError(f"--ego {spec}: expected udp://HOST:PORT, e.g. udp://0.0.0.0:9871")
        return UdpEgoInput(spec, parts.hostname, port)
    if scheme in ("constant", "profile") and (parts.netloc or parts.path not in ("", "/")):
        raise VlaError(f"--ego {spec}: parameters go after '?', e.g. {scheme}://?"
                       + ("speed=10" if scheme == "constant" else "speed_scale=0.5"))
    if scheme == "constant":
        q = _query(spec, parts.query, ("speed", "yaw_rate", "accel", "steering"))
        for key, x in q.items():
            limit, unit = _LIMITS[key]
            if abs(x) > limit:
                raise VlaError(f"--ego {spec}: implausible {key} {x:g} {unit} (limit ±{limit:g} {unit})")
        return ConstantEgoInput(spec, q.get("speed", 0.0), q.get("accel", 0.0), q.get("yaw_rate", 0.0),
                                q.get("steering"))
    if scheme == "profile":
        scale = _query(spec, parts.query, ("speed_scale",)).get("speed_scale", 1.0)
        if not 0.0 < scale <= MAX_SPEED / PROFILE_CRUISE:
            raise VlaError(f"--ego {spec}: speed_scale must be in (0, {MAX_SPEED / PROFILE_CRUISE:g}]")
        return ProfileEgoInput(spec, scale)
    raise VlaError(f"--ego {spec}: unknown ego input; use {GRAMMAR}")
