"""The live view (``vla-run --foxglove``): a real foxglove-sdk server on loopback, read by a real WebSocket
client speaking the Foxglove WebSocket protocol, fed with messages made by ``format.py``'s encoders; and
the shipped Foxglove layout, checked against the topics ``format.py`` defines.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import VLA_RUN
from vla.runtime.errors import VlaError
from vla.runtime.record import format as fmt

pytest.importorskip("foxglove")
from vla.runtime.record.live import LiveView, served  # needs foxglove-sdk

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = ROOT / "foxglove" / "vla-layout.json"
# What the Foxglove app offers: foxglove-sdk 0.30 accepts only the first (its successor of the second),
# with the same messages on the wire.
SUBPROTOCOLS = ("foxglove.sdk.v1", "foxglove.websocket.v1")
T0 = 1_700_000_000_000_000_000  # a wall-clock time in ns, as Foxglove shows live data


# ---- a minimal RFC 6455 client ---------------------------------------------------------------------
# No WebSocket package is installed here (websockets, websocket-client, aiohttp, tornado: none), and the
# test must speak the wire protocol a Foxglove app speaks anyway, so this is the client: the opening
# handshake with the Foxglove subprotocols, unmasked server frames (7/16/64-bit lengths, fragments,
# ping), and masked client text frames.
class WsClient:
    def __init__(self, port: int, timeout: float = 20.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)  # a guard against hangs only
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"Sec-WebSocket-Protocol: {', '.join(SUBPROTOCOLS)}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, "server closed during the handshake"
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].split()[1] == "101", lines[0]
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        assert headers["sec-websocket-accept"] == accept.decode()
        assert headers["sec-websocket-protocol"] in SUBPROTOCOLS

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return bytes(buf)

    def _frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = self._exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._exact(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._exact(8))[0]
        mask = self._exact(4) if b1 & 0x80 else None
        data = self._exact(n)
        if mask:
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
        return bool(b0 & 0x80), b0 & 0x0F, data

    def recv(self) -> tuple[int, bytes]:
        """The next data message: (1 text | 2 binary, payload); pings are answered."""
        opcode, payload = 0, b""
        while True:
            fin, op, data = self._frame()
            if op == 0x9:
                self._send(0xA, data)
                continue
            if op == 0x8:
                raise ConnectionError("server sent close")
            if op in (0x1, 0x2):
                opcode, payload = op, data
            elif op == 0x0:
                payload += data
            if fin and opcode:
                return opcode, payload

    def recv_json(self) -> dict[str, Any]:
        while True:
            op, data = self.recv()
            if op == 0x1:
                return json.loads(data)

    def _send(self, opcode: int, data: bytes) -> None:
        n = len(data)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(data)))

    def send_json(self, obj: dict[str, Any]) -> None:
        self._send(0x1, json.dumps(obj).encode())

    def close(self) -> None:
        self.sock.close()


def wait_for(cond, what: str, limit: float = 20.0) -> None:
    """Poll ``cond`` (the server works on its own threads); the limit only stops a hang."""
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


# ---- messages --------------------------------------------------------------------------------------
def tick_record(i: int, status: str = "ok") -> dict[str, Any]:
    return {"schema": "vla.tick/2", "tick": i, "status": status, "reason": None,
            "latency_ms": {"preprocess": 1.25, "engine": 7.5 + i, "decode": 0.5, "e2e": 9.875 + i},
            "surprise": 0.125 * i, "shadow": {"ade_m": 0.25}, "trajectory": [[1.0, 0.0, 0.0], [2.0, 0.1, 0.05]]}


def first_messages() -> list[fmt.Message]:
    pts = np.array([[1.0, 0.0, 0.0], [2.0, 0.2, 0.1], [3.0, 0.5, 0.2]])
    img = np.zeros((24, 32, 3), np.uint8)
    img[:, :16] = (0, 128, 255)
    cam = fmt.rig_cameras(["front"], {"front": (32, 24)})[0]
    return [
        fmt.tensor_message(fmt.INPUT.format("x"), T0, np.arange(6, dtype=np.float32).reshape(2, 3)),
        fmt.tensor_message(fmt.CAMERA_RAW.format("front"), T0, img),
        fmt.tensor_message(fmt.OUTPUT.format("latent"), T0, np.ones(4, np.float32)),
        fmt.json_message(fmt.TICK, T0, tick_record(0), "vla.tick/2"),
        fmt.poses_message(T0, pts),
        fmt.scene_message(T0, pts, "ok"),
        fmt.jpeg_message("front", T0, img),
        fmt.calibration_message(T0, cam),
        fmt.tf_message(T0, [cam]),
        fmt.health_message(T0, "fault: camera front stalled"),
    ]


SERVED = {fmt.TICK: ("json", "vla.tick/2", "jsonschema"),
          fmt.TRAJECTORY: ("protobuf", "foxglove.PosesInFrame", "protobuf"),
          fmt.SCENE: ("protobuf", "foxglove.SceneUpdate", "protobuf"),
          "/camera/front": ("protobuf", "foxglove.CompressedImage", "protobuf"),
          "/camera/front/calibration": ("protobuf", "foxglove.CameraCalibration", "protobuf"),
          fmt.TF: ("protobuf", "foxglove.FrameTransforms", "protobuf"),
          fmt.HEALTH: ("protobuf", "foxglove.Log", "protobuf")}
NOT_SERVED = {"/engine/input/x", "/camera/front/raw", "/engine/output/latent"}


@pytest.fixture
def live():
    view = LiveView(port=0)
    yield view
    view.close()


def test_served_rule():
    assert not served("/engine/input/image", "vla.npy")
    assert not served("/engine/state/memory", "json")  # a tensor topic, whatever it claims
    assert not served("/engine/context/scene", "vla.npy")
    assert not served("/camera/left/raw", "vla.npy")
    assert not served("/engine/output/latent", "vla.npy")
    for topic in ("/tick", "/trajectory", "/trajectory/scene", "/camera/front", "/camera/front/calibration",
                  "/tf", "/ego", "/command", "/health", "/engine/run", "/camera/raw"):
        assert served(topic, "json"), topic


def test_client_sees_channels_and_messages_live(live: LiveView):
    sent = first_messages()
    for m in sent:
        live.write(m)
    client = WsClient(live.port)
    try:
        info = client.recv_json()
        assert info["op"] == "serverInfo"
        assert info["name"] == "vla-run"
        channels: dict[str, dict[str, Any]] = {}
        while not set(SERVED) <= set(channels):
            msg = client.recv_json()
            if msg["op"] == "advertise":
                channels.update({c["topic"]: c for c in msg["channels"]})
        assert not NOT_SERVED & set(channels)
        by_topic = {m.topic: m for m in sent}
        for topic, (encoding, schema_name, schema_encoding) in SERVED.items():
            ch = channels[topic]
            assert (ch["encoding"], ch["schemaName"], ch["schemaEncoding"]) == (encoding, schema_name,
                                                                                 schema_encoding), topic
            got = base64.b64decode(ch["schema"]) if schema_encoding == "protobuf" else ch["schema"].encode()
            assert got == by_topic[topic].schema.data, topic

        client.send_json({"op": "subscribe", "subscriptions": [{"id": 1, "channelId": channels[fmt.TICK]["id"]}]})
        wait_for(lambda: live.clients == 1 and live.subscribed_topics() == {fmt.TICK}, "the subscription")
        written = [tick_record(i, status) for i, status in ((1, "ok"), (2, "late"), (3, "fault"))]
        for i, rec in enumerate(written, start=1):
            live.write(fmt.json_message(fmt.TICK, T0 + i * 100_000_000, rec, "vla.tick/2"))
        got = []
        while len(got) < len(written):
            op, data = client.recv()
            if op == 0x2:
                assert data[0] == 0x01  # message data
                sub_id, log_time = struct.unpack_from("<IQ", data, 1)
                assert sub_id == 1
                got.append((log_time, json.loads(data[13:])))
        assert got == [(T0 + i * 100_000_000, rec) for i, rec in enumerate(written, start=1)]
        assert live.failures == 0
    finally:
        client.close()
    wait_for(lambda: live.clients == 0, "the client to leave")


def test_a_channel_first_seen_while_connected_is_advertised(live: LiveView):
    live.write(fmt.json_message(fmt.TICK, T0, tick_record(0), "vla.tick/2"))
    client = WsClient(live.port)
    try:
        assert client.recv_json()["op"] == "serverInfo"
        topics: set[str] = set()
        while fmt.TICK not in topics:
            msg = client.recv_json()
            topics |= {c["topic"] for c in msg.get("channels", [])} if msg["op"] == "advertise" else set()
        live.write(fmt.tensor_message(fmt.STATE.format("memory"), T0, np.zeros(3, np.float32)))
        live.write(fmt.json_message(fmt.COMMAND, T0, {"command": "left"}, "vla.command/1"))
        msg = client.recv_json()
        assert msg["op"] == "advertise"
        assert [c["topic"] for c in msg["channels"]] == [fmt.COMMAND]  # and never the state tensor
    finally:
        client.close()


def test_a_failing_write_warns_once_and_never_raises(live: LiveView, capsys):
    bad = fmt.Message("/ego", T0, b"{}", "json", fmt.JSON_SCHEMAS["vla.ego-sample/1"], {"rate": 10})  # not a str
    live.write(bad)
    live.write(bad)
    live.write(fmt.json_message(fmt.TICK, T0, tick_record(0), "vla.tick/2"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/ego" in err[0] and "warning" in err[0]
    assert live.failures == 2


def test_port_in_use_is_one_line(live: LiveView):
    with pytest.raises(VlaError) as info:
        LiveView(port=live.port)
    text = str(info.value)
    assert f"--foxglove {live.port}" in text and "in use" in text and "\n" not in text


def test_an_address_this_machine_lacks_is_one_line():
    with pytest.raises(VlaError) as info:
        LiveView(port=0, host="203.0.113.7")  # TEST-NET-3: documentation only, never a local address
    text = str(info.value)
    assert "203.0.113.7" in text and "\n" not in text


def test_close_frees_the_port_and_ignores_later_writes():
    view = LiveView(port=0)
    port = view.port
    view.write(fmt.json_message(fmt.TICK, T0, tick_record(0), "vla.tick/2"))
    view.close()
    view.write(fmt.json_message(fmt.TICK, T0, tick_record(1), "vla.tick/2"))
    view.close()
    assert view.failures == 0
    again: list[LiveView] = []

    def rebind() -> bool:  # the SDK's server lets go of its socket a moment after stop() returns
        try:
            again.append(LiveView(port=port))
        except VlaError:
            return False
        return True

    wait_for(rebind, f"port {port} to be free again")
    assert again[0].port == port
    again[0].close()


# ---- the shipped layout ----------------------------------------------------------------------------
TOPIC_TEMPLATES = [v for k, v in vars(fmt).items() if k.isupper() and isinstance(v, str) and v.startswith("/")]


def known_topic(topic: str) -> bool:
    for t in TOPIC_TEMPLATES:
        head, brace, tail = t.partition("{}")
        pattern = re.escape(head) + ("[^/]+" + re.escape(tail) if brace else "")
        if re.fullmatch(pattern, topic):
            return True
    return False


def layout_topics(node: Any) -> set[str]:
    """Every topic the layout names: topic settings keys and the topic part of message paths."""
    found: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k.startswith("/"):
                found.add(k)
            found |= layout_topics(v)
    elif isinstance(node, list):
        for v in node:
            found |= layout_topics(v)
    elif isinstance(node, str) and node.startswith("/"):
        found.add(re.split(r"[.{\[]", node, maxsplit=1)[0])  # "/tick.latency_ms.e2e" -> "/tick"
    return found


def panel_ids(node: Any) -> set[str]:
    if isinstance(node, str):
        return {node}
    return panel_ids(node["first"]) | panel_ids(node["second"])


def test_layout_names_only_recorded_topics():
    layout = json.loads(LAYOUT.read_text())
    assert {"configById", "globalVariables", "userNodes", "playbackConfig", "layout"} <= set(layout)
    assert panel_ids(layout["layout"]) == set(layout["configById"])
    topics = layout_topics(layout["configById"])
    unknown = sorted(t for t in topics if not known_topic(t))
    assert not unknown, f"the layout names topics format.py does not define: {unknown}"
    assert not [t for t in topics if not served(t, "")], "the layout shows a topic the live view does not serve"

    configs = layout["configById"]
    kinds = {pid: pid.split("!")[0] for pid in configs}
    images = {configs[p]["imageMode"]["imageTopic"]: configs[p] for p, k in kinds.items() if k == "Image"}
    assert set(images) == {fmt.CAMERA.format(n) for n in ("front", "left", "right")}
    front = images["/camera/front"]
    assert front["imageMode"]["calibrationTopic"] == fmt.CALIBRATION.format("front")
    assert front["topics"][fmt.SCENE]["visible"] is True  # the trajectory, projected into the image
    three = [configs[p] for p, k in kinds.items() if k == "3D"]
    assert len(three) == 1 and three[0]["followTf"] == fmt.EGO_FRAME
    assert three[0]["cameraState"]["perspective"] is False  # top-down
    assert {fmt.TRAJECTORY, fmt.SCENE} <= {t for t, s in three[0]["topics"].items() if s.get("visible")}
    plotted = {s["value"] for p, k in kinds.items() if k == "Plot" for s in configs[p]["paths"]}
    assert {"/tick.latency_ms.e2e", "/tick.latency_ms.engine", "/tick.surprise", "/tick.shadow.ade_m"} <= plotted
    assert [s["value"] for p, k in kinds.items() if k == "StateTransitions" for s in configs[p]["paths"]] == [
        "/tick.status"]
    assert [configs[p]["topicPath"] for p, k in kinds.items() if k == "RawMessages"] == [fmt.TICK]
    assert [configs[p]["topicToRender"] for p, k in kinds.items() if k == "RosOut"] == [fmt.HEALTH]  # the Log panel


def test_vla_run_serves_its_channels_live(tiny_bundle):
    """``vla-run --foxglove 0``: a WebSocket client sees the loop's channels advertised and its tick records
    arrive live, while the run goes on."""
    proc = subprocess.Popen([*VLA_RUN, "--engine", str(tiny_bundle), "--camera", "synthetic://", "--frames", "600",
                             "--foxglove", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stderr:
            if "Foxglove live view on ws://localhost:" in line:
                port = int(line.split("ws://localhost:")[1].split()[0])
                break
        assert port, "vla-run did not say where the live view is"
        client = WsClient(port)
        try:
            assert client.recv_json()["op"] == "serverInfo"
            channels: dict[str, dict[str, Any]] = {}
            want = {fmt.TICK, fmt.TRAJECTORY, fmt.SCENE, fmt.EGO, "/camera/front", "/camera/front/calibration", fmt.TF}
            while not want <= set(channels):
                msg = client.recv_json()
                if msg["op"] == "advertise":
                    channels.update({c["topic"]: c for c in msg["channels"]})
            tensors = [t for t in channels if t.startswith(("/engine/input/", "/engine/output/", "/engine/state/"))]
            assert not tensors, f"tensors are not served live: {tensors}"
            client.send_json({"op": "subscribe", "subscriptions": [{"id": 7, "channelId": channels[fmt.TICK]["id"]}]})
            ticks = []
            while len(ticks) < 3:
                op, data = client.recv()
                if op == 0x2 and data[0] == 0x01:
                    assert struct.unpack_from("<I", data, 1)[0] == 7
                    ticks.append(json.loads(data[13:]))
            assert all(t["schema"] == "vla.tick/2" for t in ticks)
            assert [t["tick"] for t in ticks] == sorted(t["tick"] for t in ticks)
        finally:
            client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
