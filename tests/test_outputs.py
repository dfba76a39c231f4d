"""Outputs: UDP datagrams to a real socket on loopback, and the JSON lines sinks."""

from __future__ import annotations

import json
import socket

import pytest

from conftest import VLA_RUN, assert_one_line_error, run_cli
from vla.runtime.errors import VlaError
from vla.runtime.outputs.sinks import JsonLinesSink, UdpSink, open_sink


@pytest.fixture
def receiver():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5.0)
    yield sock
    sock.close()


def test_udp_sink_sends_one_datagram_per_record_with_a_sequence(receiver):
    port = receiver.getsockname()[1]
    sink = open_sink(f"udp://127.0.0.1:{port}")
    assert isinstance(sink, UdpSink)
    for i in range(3):
        sink.write({"schema": "vla.tick/2", "tick": i, "trajectory": [[1.0, 2.0, 0.0]] * 64})
    got = [json.loads(receiver.recv(65536)) for _ in range(3)]
    sink.close()
    assert [g["seq"] for g in got] == [0, 1, 2]
    assert [g["tick"] for g in got] == [0, 1, 2] and all(g["schema"] == "vla.tick/2" for g in got)


def test_udp_send_failures_are_counted_not_raised():
    sink = UdpSink("udp://127.0.0.1:9")  # discard port: nobody listens on loopback
    for _ in range(3):
        sink.write({"schema": "vla.tick/2"})
    sink.write({"schema": "vla.tick/2", "blob": "x" * 70000})  # too big for one datagram
    assert sink.seq == 4 and sink.dropped >= 1
    sink.close()


@pytest.mark.parametrize(("target", "needle"), [("udp://127.0.0.1", "expected udp://HOST:PORT"),
                                                ("udp://:9870", "expected udp://HOST:PORT"),
                                                ("tcp://127.0.0.1:1", "unknown scheme")])
def test_bad_output_targets(target, needle):
    with pytest.raises(VlaError, match=needle):
        open_sink(target)


def test_file_sink_unwritable(tmp_path):
    with pytest.raises(VlaError, match="cannot open for writing"):
        JsonLinesSink(str(tmp_path / "missing-dir" / "run.jsonl"))


def test_vla_run_publishes_to_udp_and_stdout(reference_bundle, receiver):
    port = receiver.getsockname()[1]
    proc = run_cli(VLA_RUN, "--engine", reference_bundle, "--camera", "synthetic://?size=320x180", "--frames", "4",
                   "--output", "-", "--output", f"udp://127.0.0.1:{port}")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    datagrams = [json.loads(receiver.recv(65536)) for _ in range(4)]
    assert [d["seq"] for d in datagrams] == [0, 1, 2, 3]
    assert [d["tick"] for d in datagrams] == [r["tick"] for r in lines]
    assert datagrams[-1]["trajectory"] == lines[-1]["trajectory"]


def test_vla_run_bad_output_is_one_line(reference_bundle):
    assert_one_line_error(run_cli(VLA_RUN, "--engine", reference_bundle, "--camera", "synthetic://?size=320x180",
                                  "--frames", "1", "--output", "udp://nohost"), "expected udp://HOST:PORT")
