"""Prometheus endpoint: real HTTP scrapes on loopback, parsed with prometheus_client's own text parser."""

from __future__ import annotations

import math
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vla.runtime.errors import VlaError
from vla.runtime.outputs.metrics import LATENCY_BUCKETS_MS, MAX_REASONS, Metrics


def record(status: str, e2e: float, reason: str | None = None, **stages: float) -> dict:
    lat = {"preprocess": 2.0, "engine": 25.0, **stages, "e2e": e2e}
    return {"schema": "vla.tick/1", "tick": 0, "status": status, "reason": reason, "event": None,
            "latency_ms": lat, "fallback_age_ms": None}


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample of ``/metrics`` as {(name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def labelled(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name}


@pytest.fixture
def metrics():
    m = Metrics(0, host="127.0.0.1")
    yield m
    m.close()


def test_counts_histograms_and_gauges_after_a_few_records(metrics):
    before = scrape(metrics.port)
    assert labelled(before, "vla_ticks_total", "status") == {"ok": 0, "late": 0, "fallback": 0, "fault": 0}
    assert math.isnan(value(before, "vla_frame_age_ms")) and math.isnan(value(before, "vla_ego_age_ms"))

    metrics.observe(record("ok", 40.0, decode=0.4))
    metrics.observe(record("late", 120.0, decode=0.6))
    metrics.observe(record("fallback", 45.0, reason="engine error: RuntimeError: boom"))
    metrics.observe(record("fault", 300.0, reason="5 consecutive fallbacks (last: engine error: boom)"))
    metrics.dropped("front", 2)
    metrics.dropped("front")
    metrics.dropped("left")
    metrics.ego_age(35.5)
    metrics.set_info(model="reference", backend="onnxruntime-cpu")
    s = scrape(metrics.port)

    assert labelled(s, "vla_ticks_total", "status") == {"ok": 1, "late": 1, "fallback": 1, "fault": 1}
    assert labelled(s, "vla_fallbacks_total", "reason") == {"engine error": 1}  # fault ticks are not fallbacks
    buckets = {dict(labels)["le"]: v for (name, labels), v in s.items()
               if name == "vla_latency_ms_bucket" and ("stage", "e2e") in labels}
    assert list(buckets) == [*map(str, LATENCY_BUCKETS_MS), "+Inf"] and LATENCY_BUCKETS_MS[-1] == 500.0
    assert buckets["30.0"] == 0 and buckets["50.0"] == 2 and buckets["100.0"] == 2
    assert buckets["150.0"] == 3 and buckets["300.0"] == 4 and buckets["500.0"] == 4 and buckets["+Inf"] == 4
    assert value(s, "vla_latency_ms_count", stage="e2e") == 4
    assert value(s, "vla_latency_ms_sum", stage="e2e") == pytest.approx(505.0)
    assert value(s, "vla_latency_ms_count", stage="decode") == 2  # only the ticks that decoded
    assert value(s, "vla_latency_ms_bucket", stage="decode", le="0.5") == 1
    assert value(s, "vla_latency_ms_count", stage="engine") == 4
    assert value(s, "vla_latency_ms_bucket", stage="engine", le="20.0") == 0
    assert value(s, "vla_latency_ms_bucket", stage="engine", le="30.0") == 4
    assert value(s, "vla_frame_age_ms") == 300.0
    assert value(s, "vla_fault") == 1.0
    assert labelled(s, "vla_dropped_frames_total", "camera") == {"front": 3, "left": 1}
    assert value(s, "vla_ego_age_ms") == 35.5
    assert value(s, "vla_model_info", model="reference", backend="onnxruntime-cpu") == 1.0

    metrics.observe(record("ok", 38.0))  # out of the fault
    metrics.ego_age(None)
    s = scrape(metrics.port)
    assert value(s, "vla_fault") == 0.0 and value(s, "vla_frame_age_ms") == 38.0
    assert value(s, "vla_ticks_total", status="ok") == 2 and math.isnan(value(s, "vla_ego_age_ms"))


def test_fallback_reason_labels_are_bounded(metrics):
    for i in range(MAX_REASONS + 5):
        metrics.observe(record("fallback", 10.0, reason=f"kind {'x' * (i + 1)}: detail {i} ms"))
    metrics.observe(record("fallback", 10.0, reason="kind x: again"))
    metrics.observe(record("fallback", 10.0, reason="no new frame from camera 'front'"))  # no ':' at all
    reasons = labelled(scrape(metrics.port), "vla_fallbacks_total", "reason")
    assert len(reasons) == MAX_REASONS + 1
    assert reasons["kind x"] == 2 and reasons["other"] == 6 and f"kind {'x' * 40}" not in reasons


def test_many_records_are_counted_exactly(metrics):
    """observe() is on the loop's path, once per tick. Measured with timeit on the 2-core dev VM
    (Python 3.11, prometheus_client 0.26): about 6 µs for an ok record with four stages and 7 µs for
    a fallback, i.e. under 0.01 % of a 100 ms tick; not asserted, timings vary by machine."""
    ok, fb = record("ok", 40.0, decode=0.4), record("fallback", 60.0, reason="camera 'front' stalled: 612 ms")
    for i in range(5000):
        metrics.observe(fb if i % 10 == 0 else ok)
    s = scrape(metrics.port)
    assert value(s, "vla_ticks_total", status="ok") == 4500
    assert value(s, "vla_fallbacks_total", reason="camera 'front' stalled") == 500
    assert value(s, "vla_latency_ms_bucket", stage="e2e", le="50.0") == 4500
    assert value(s, "vla_latency_ms_count", stage="decode") == 4500


def test_two_instances_at_once_keep_separate_registries():
    a, b = Metrics(0, host="127.0.0.1"), Metrics(0, host="127.0.0.1")
    try:
        assert a.port != b.port
        a.observe(record("ok", 40.0))
        a.observe(record("ok", 41.0))
        b.observe(record("fault", 90.0, reason="camera 'front' stalled for 1200 ms (> 1000 ms)"))
        sa, sb = scrape(a.port), scrape(b.port)
        assert labelled(sa, "vla_ticks_total", "status") == {"ok": 2, "late": 0, "fallback": 0, "fault": 0}
        assert labelled(sb, "vla_ticks_total", "status") == {"ok": 0, "late": 0, "fallback": 0, "fault": 1}
        assert value(sa, "vla_fault") == 0.0 and value(sb, "vla_fault") == 1.0
    finally:
        a.close()
        b.close()


def test_close_frees_the_port():
    m = Metrics(0, host="127.0.0.1")
    port, thread = m.port, m._thread
    m.observe(record("ok", 40.0))
    scrape(port)
    m.close()
    m.close()  # twice is fine
    assert not thread.is_alive()
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    again = Metrics(port, host="127.0.0.1")  # the same port, at once: what a restarted vla-run does
    try:
        assert again.port == port and value(scrape(port), "vla_ticks_total", status="ok") == 0  # a fresh registry
    finally:
        again.close()


def test_port_in_use_is_a_one_line_error():
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        with pytest.raises(VlaError) as exc:
            Metrics(port, host="127.0.0.1")
        assert str(exc.value) == f"--metrics-port {port}: address in use; choose another port"
    finally:
        blocker.close()


def test_port_out_of_range():
    with pytest.raises(VlaError, match="--metrics-port 70000: not a TCP port"):
        Metrics(70000)


def test_dropped_totals_and_ego_age_follow_the_loop(metrics):
    metrics.dropped_totals({"front": 2, "left": 0})
    metrics.dropped_totals({"front": 5, "left": 1})  # running totals, as Runner.dropped keeps them
    metrics.observe({**record("ok", 40.0), "ego_age_ms": 12.5})
    s = scrape(metrics.port)
    assert value(s, "vla_dropped_frames_total", camera="front") == 5
    assert value(s, "vla_dropped_frames_total", camera="left") == 1
    assert value(s, "vla_ego_age_ms") == 12.5


def test_deadline_misses_reasons_and_warnings_count_as_the_summary_does(metrics):
    """The records' deadline_missed, problem and warning, counted as vla-run's summary counts them
    (``vla.runtime.loop.tally``): a miss whatever was published, a faulted tick's own reason, warnings."""
    from vla.runtime.loop.tally import Tally

    late = "late: engine still running 412 ms in at the deadline (budget 100 ms)"
    over = "implausible trajectory beyond --max-curvature: curvature 0.52 1/m > 0.3 at t=1.2 s"
    records = [
        {**record("ok", 40.0), "problem": None, "deadline_missed": False, "warning": over},
        {**record("late", 100.0, reason=late), "problem": late, "deadline_missed": True, "warning": None},
        {**record("fallback", 30.0, reason="engine overrun: the previous run is still going after 180 ms"),
         "problem": "engine overrun: the previous run is still going after 180 ms", "deadline_missed": True,
         "warning": None},
        {**record("fault", 100.0, reason=f"3 consecutive fallbacks (last: {late})"), "problem": late,
         "deadline_missed": True, "warning": None},
        {**record("fallback", 12.0, reason=over), "problem": over, "deadline_missed": False, "warning": None},
    ]
    for r in records:
        metrics.observe(r)
    s = scrape(metrics.port)
    assert labelled(s, "vla_deadline_misses_total", "status") == {"ok": 0, "late": 1, "fallback": 1, "fault": 1}
    assert labelled(s, "vla_fallbacks_total", "reason") == {
        "late": 2, "engine overrun": 1, "implausible trajectory beyond --max-curvature": 1}
    assert labelled(s, "vla_limit_warnings_total", "reason") == {"implausible trajectory beyond --max-curvature": 1}
    # The same figures as the summary's, from the same records.
    counts = Tally().extend(records).as_dict()
    assert sum(labelled(s, "vla_deadline_misses_total", "status").values()) == counts["deadline_misses"] == 3
    assert labelled(s, "vla_fallbacks_total", "reason") == counts["fallback_reasons"]
    assert labelled(s, "vla_ticks_total", "status") == counts["status"]
