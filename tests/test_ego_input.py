"""Ego inputs: real UDP datagrams on loopback, the pure parsers, the synthetic drive, the spec grammar."""

from __future__ import annotations

import json
import math
import socket
import time

import pytest

from vla.runtime.errors import VlaError
from vla.runtime.inputs.ego_input import (
    PROFILE_CRUISE,
    PROFILE_CURVATURE,
    PROFILE_PERIOD_S,
    ConstantEgoInput,
    EgoReading,
    FrameEgoInput,
    ProfileEgoInput,
    UdpEgoInput,
    ego_staleness,
    open_ego_input,
    parse_ego_message,
    profile_state,
)
from vla.runtime.inputs.sources.base import EgoState


@pytest.fixture
def udp():
    inp = open_ego_input("udp://127.0.0.1:0")
    assert isinstance(inp, UdpEgoInput) and inp.port > 0
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(payload: bytes | dict) -> None:
        """Send one datagram and wait until the receiver thread has counted it."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        before = inp.received
        sender.sendto(data, ("127.0.0.1", inp.port))
        deadline = time.monotonic() + 5.0
        while inp.received == before:
            assert time.monotonic() < deadline, "datagram never received"
            time.sleep(0.001)

    yield inp, send
    sender.close()
    inp.close()


def msg(**kw) -> dict:
    return {"schema": "vla.ego/1", "speed": 10.0, "yaw_rate": 0.0, **kw}


# ---- UDP ---------------------------------------------------------------------------------------------
def test_udp_reading_carries_the_fields_and_the_receipt_time(udp):
    inp, send = udp
    assert inp.latest(time.monotonic()) is None
    t0 = time.monotonic()
    send(msg(speed=12.5, yaw_rate=0.1, accel=-0.5, steering=0.05, seq=1))
    t1 = time.monotonic()
    r = inp.latest(time.monotonic())
    assert (r.speed, r.yaw_rate, r.accel, r.steering) == (12.5, 0.1, -0.5, 0.05)
    assert t0 <= r.time <= t1  # our clock at receipt, not the sender's
    assert (inp.received, inp.rejected, inp.last_error) == (1, 0, None)


def test_udp_keeps_only_the_newest_reading_and_defaults_optional_fields(udp):
    inp, send = udp
    send({"speed": 3.0, "yaw_rate": -0.2})  # no schema, accel, steering or seq: all optional
    send({"speed": 4.0, "yaw_rate": 0.3, "accel": None})
    r = inp.latest(time.monotonic())
    assert (r.speed, r.yaw_rate, r.accel, r.steering) == (4.0, 0.3, 0.0, None)
    assert inp.received == 2 and inp.rejected == 0


@pytest.mark.parametrize(("payload", "error"), [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"speed": NaN, "yaw_rate": 0}', "field 'speed' is not finite (nan)"),
    (b'{"speed": 1, "yaw_rate": Infinity}', "field 'yaw_rate' is not finite (inf)"),
    (b'{"speed": 1}', "missing field 'yaw_rate'"),
    (b'{"yaw_rate": 0}', "missing field 'speed'"),
    (b'{"speed": "10", "yaw_rate": 0}', "field 'speed' is not a number"),
    (b'{"speed": true, "yaw_rate": 0}', "field 'speed' is not a number"),
    (b'{"speed": 100.5, "yaw_rate": 0}', "implausible speed 100.5 m/s"),
    (b'{"speed": -101, "yaw_rate": 0}', "implausible speed -101 m/s"),
    (b'{"speed": 1, "yaw_rate": 3.2}', "implausible yaw_rate 3.2 rad/s"),
    (b'{"speed": 1, "yaw_rate": 0, "accel": -25}', "implausible accel -25 m/s"),
    (b'{"speed": 1, "yaw_rate": 0, "seq": "7"}', "field 'seq' is not an integer"),
    (b'{"schema": "vla.ego/2", "speed": 1, "yaw_rate": 0}', "unsupported schema"),
])
def test_udp_rejects_malformed_messages_counts_them_and_keeps_listening(udp, payload, error):
    inp, send = udp
    send(msg(speed=7.0))
    good = inp.latest(time.monotonic())
    send(payload)
    assert (inp.received, inp.rejected) == (2, 1)
    assert inp.last_error is not None and error in inp.last_error and "from 127.0.0.1:" in inp.last_error
    assert inp.latest(time.monotonic()) is good  # the previous valid reading stays
    send(msg(speed=8.0))  # the thread survived
    assert inp.latest(time.monotonic()).speed == 8.0 and inp.rejected == 1


def test_udp_limits_are_inclusive(udp):
    inp, send = udp
    send(msg(speed=-100.0, yaw_rate=3.0, accel=20.0))
    assert inp.rejected == 0 and inp.latest(time.monotonic()).speed == -100.0


def test_udp_rejects_out_of_order_and_repeated_seq(udp):
    inp, send = udp
    send(msg(speed=5.0, seq=5))
    send(msg(speed=3.0, seq=3))
    assert inp.rejected == 1 and "out-of-order seq 3 (newest 5)" in inp.last_error
    send(msg(speed=5.5, seq=5))
    assert inp.rejected == 2 and "out-of-order seq 5 (newest 5)" in inp.last_error
    assert inp.latest(time.monotonic()).speed == 5.0
    send(msg(speed=6.0, seq=6))
    send(msg(speed=6.5))  # no seq: no order to check
    assert inp.latest(time.monotonic()).speed == 6.5 and inp.rejected == 2


def test_udp_follows_a_restarted_sender(udp):
    inp, _ = udp
    t = 1000.0
    assert inp.accept(json.dumps(msg(seq=10)).encode(), t)
    assert not inp.accept(json.dumps(msg(seq=0)).encode(), t + 0.5)  # a reordered datagram, seemingly
    assert inp.accept(json.dumps(msg(seq=1)).encode(), t + 0.5 + inp.restart_after_s + 0.01)  # silent too long
    assert inp.accept(json.dumps(msg(seq=5000)).encode(), t + 2.0)
    assert inp.accept(json.dumps(msg(seq=2)).encode(), t + 2.1)  # far back: a restart, at once
    assert inp.latest(t).time == t + 2.1 and inp.rejected == 1


def test_udp_bind_failure_names_the_address_and_the_os_error():
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    try:
        with pytest.raises(VlaError, match=rf"cannot bind 127\.0\.0\.1:{port} \(Address already in use\)"):
            open_ego_input(f"udp://127.0.0.1:{port}")
    finally:
        blocker.close()


def test_udp_close_stops_the_thread_and_frees_the_port():
    inp = open_ego_input("udp://127.0.0.1:0")
    port, thread = inp.port, inp._thread
    inp.close()
    inp.close()  # twice is fine
    assert not thread.is_alive()
    again = open_ego_input(f"udp://127.0.0.1:{port}")
    again.close()


# ---- pure functions ----------------------------------------------------------------------------------
def test_parse_ego_message_fields():
    m = parse_ego_message(b'{"schema": "vla.ego/1", "speed": 1, "yaw_rate": -0.5, "steering": 0.1, "seq": 9}')
    assert (m.speed, m.accel, m.yaw_rate, m.steering, m.seq) == (1.0, 0.0, -0.5, 0.1, 9)
    assert isinstance(m.speed, float)
    with pytest.raises(ValueError, match="is not finite"):
        parse_ego_message(b'{"speed": 1' + b"0" * 400 + b', "yaw_rate": 0}')  # an int beyond float range
    with pytest.raises(ValueError, match="implausible steering"):
        parse_ego_message(b'{"speed": 1, "yaw_rate": 0, "steering": 11}')


def test_ego_staleness_at_the_boundaries():
    r = EgoReading(speed=1.0, accel=0.0, yaw_rate=0.0, steering=None, time=100.0)
    assert ego_staleness(None, 100.0, 200.0) == "no ego message yet"
    assert ego_staleness(r, 100.25, 250.0) is None  # exactly at the limit: still fresh
    assert ego_staleness(r, 100.25, 249.9) == "ego stale: last message 250 ms ago (limit 249.9 ms)"
    assert ego_staleness(r, 100.352, 200.0) == "ego stale: last message 352 ms ago (limit 200 ms)"
    assert ego_staleness(r, 100.0, 0.0) is None
    assert ego_staleness(r, 99.0, 200.0) is None  # from a frame captured after "now" was taken


def test_profile_accel_is_the_derivative_of_speed_and_yaw_rate_follows_the_curve():
    h = 1e-5
    for i in range(-100, 8100):  # two cycles, phase boundaries included: the half-cosine ramps keep accel continuous
        t = i * 0.01
        s0, s1 = profile_state(t - h)[0], profile_state(t + h)[0]
        assert math.isclose((s1 - s0) / (2 * h), profile_state(t)[1], abs_tol=1e-5), t
    for t in (0.0, 10.0, 30.0, 38.0, PROFILE_PERIOD_S):  # continuous speed across the phases
        assert math.isclose(profile_state(t - 1e-9)[0], profile_state(t + 1e-9)[0], abs_tol=1e-6), t
    assert profile_state(-1.0) == (0.0, 0.0, 0.0)
    assert profile_state(0.0)[0] == 0.0 and profile_state(12.0) == (PROFILE_CRUISE, 0.0, 0.0)
    speed, accel, yaw = profile_state(20.0)  # the curve's apex
    assert (speed, accel) == (PROFILE_CRUISE, 0.0) and math.isclose(yaw, PROFILE_CRUISE * PROFILE_CURVATURE)
    assert profile_state(39.0) == (0.0, 0.0, 0.0) and profile_state(35.0)[1] < 0  # braking, then standing
    assert profile_state(5.0 + PROFILE_PERIOD_S) == profile_state(5.0)  # it repeats
    speed, accel, yaw = profile_state(20.0, speed_scale=0.5)
    assert math.isclose(speed, PROFILE_CRUISE / 2) and math.isclose(yaw, PROFILE_CRUISE * PROFILE_CURVATURE / 2)
    peak_accel = max(abs(profile_state(i * 0.01)[1]) for i in range(4000))
    assert 1.5 < peak_accel < 2.5  # gentle: a normal drive, not a test of the limits


def test_profile_input_is_a_function_of_time_since_start_and_always_fresh():
    inp = ProfileEgoInput("profile://", start=500.0)
    r = inp.latest(520.0)
    assert (r.speed, r.accel, r.yaw_rate) == profile_state(20.0) and r.time == 520.0
    opened = open_ego_input("profile://?speed_scale=0.5")
    assert isinstance(opened, ProfileEgoInput) and opened.speed_scale == 0.5
    now = time.monotonic()
    assert ego_staleness(opened.latest(now), now, 1.0) is None


def test_constant_input():
    inp = open_ego_input("constant://?speed=10&yaw_rate=-0.1&accel=0.5")
    assert isinstance(inp, ConstantEgoInput)
    r = inp.latest(42.0)
    assert r == EgoReading(speed=10.0, accel=0.5, yaw_rate=-0.1, steering=None, time=42.0)
    assert open_ego_input("constant://").latest(1.0) == EgoReading(0.0, 0.0, 0.0, None, 1.0)
    assert "10 m/s" in inp.describe()


def test_frame_ego_input_returns_the_last_pushed_state():
    inp = open_ego_input("camera")
    assert isinstance(inp, FrameEgoInput) and inp.latest(0.0) is None
    inp.push(None, 1.0)  # a camera that knows no ego state
    assert inp.latest(1.0) is None and ego_staleness(inp.latest(1.0), 1.0, 200) == "no ego message yet"
    inp.push(EgoState(speed=8.0, accel=0.2, yaw_rate=0.01), 2.0)
    inp.push(EgoState(speed=8.0, accel=0.2, yaw_rate=0.01), 2.0)  # the same frame again: not counted twice
    assert inp.latest(5.0) == EgoReading(8.0, 0.2, 0.01, None, 2.0) and inp.received == 1
    inp.push(EgoState(speed=math.nan, accel=0.0, yaw_rate=0.0), 3.0)
    assert inp.rejected == 1 and "not finite" in inp.last_error and inp.latest(5.0).time == 2.0


# ---- grammar -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "error"), [
    ("can", "unknown ego input; use udp://HOST:PORT, constant://"),
    ("tcp://127.0.0.1:9", "unknown ego input"),
    ("", "unknown ego input"),
    ("udp://127.0.0.1", "expected udp://HOST:PORT"),
    ("udp://:9871", "expected udp://HOST:PORT"),
    ("udp://127.0.0.1:70000", "expected udp://HOST:PORT"),
    ("udp://127.0.0.1:9871/x", "expected udp://HOST:PORT"),
    ("constant://?speed=fast", "speed='fast' is not a finite number"),
    ("constant://?speed=nan", "not a finite number"),
    ("constant://?sped=1", "unknown parameter 'sped'"),
    ("constant://?speed=1&speed=2", "given 2 times"),
    ("constant://?speed=150", "implausible speed 150 m/s"),
    ("constant://speed=1", "parameters go after '?'"),
    ("profile://?speed_scale=0", "speed_scale must be in"),
    ("profile://?scale=2", "unknown parameter 'scale'"),
])
def test_spec_grammar_errors(spec, error):
    with pytest.raises(VlaError, match=r"^--ego ") as exc:
        open_ego_input(spec)
    assert error in str(exc.value) and "\n" not in str(exc.value)
