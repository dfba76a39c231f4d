"""What a recording holds: channel names, schemas and message encodings, in one place.

The recorder (``recorder.py``), the live view (``live.py``) and replay (``runtime/replay``) all read
this module, so a file, a live session and a replay agree on every topic. A recording is an MCAP file
(``writer.py``) whose channels are named by what they carry:

================================  =====================================  ==========================
topic                             what                                   encoding
================================  =====================================  ==========================
``/tick``                         each tick's record (status, reason,    JSON (``vla.tick/2``)
                                  timings, trajectory, surprise, shadow)
``/trajectory``                   the published trajectory, ego frame    foxglove.PosesInFrame
``/trajectory/scene``             the same as a line strip (3D panel,    foxglove.SceneUpdate
                                  projected into the front image)
``/camera/<name>``                the frame the model saw, for viewing   foxglove.CompressedImage
``/camera/<name>/calibration``    its pinhole model (image projection)   foxglove.CameraCalibration
``/tf``                           ego -> camera mounts                   foxglove.FrameTransforms
``/ego``                          the vehicle state the tick used        JSON (``vla.ego-sample/1``)
``/command``                      route command changes                  JSON (``vla.command/1``)
``/health``                       fault / recovery events                foxglove.Log
``/engine/run``                   each engine run: kind, tick, context   JSON (``vla.run/1``)
``/engine/input/<name>``          the run's exact model inputs           ``vla.npy`` (lossless)
``/engine/state/<name>``          recurrent state before a run           ``vla.npy``
``/engine/context/<name>``        the slow stages' context a fast run    ``vla.npy``
                                  read (dual rate)
``/engine/output/<name>``         every output of every run              ``vla.npy``
``/camera/<name>/raw``            the camera's raw frame (--record-raw)  ``vla.npy``
================================  =====================================  ==========================

Tensors are NumPy ``.npy`` bytes (``encode_tensor``/``decode_tensor``), read back with
``allow_pickle=False``: a recording never makes anyone unpickle anything. Foxglove messages are
protobuf, with the schemas foxglove-sdk ships. Metadata records hold the bundle's identity
(``vla.bundle``), the run's settings (``vla.run``) and the manifest itself (``vla.manifest``).

Everything here is pure: the encoders turn values into ``Message``s and run on the writer's thread.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..inputs.sources.scene import Camera, Rig

PROFILE = "vla"  # the MCAP header's profile
FORMAT_VERSION = "vla.recording/1"

TICK = "/tick"
TRAJECTORY = "/trajectory"
SCENE = "/trajectory/scene"
EGO = "/ego"
COMMAND = "/command"
HEALTH = "/health"
TF = "/tf"
RUN = "/engine/run"
CAMERA = "/camera/{}"
CAMERA_RAW = "/camera/{}/raw"
CALIBRATION = "/camera/{}/calibration"
INPUT = "/engine/input/{}"
STATE = "/engine/state/{}"
CONTEXT = "/engine/context/{}"
OUTPUT = "/engine/output/{}"

TENSOR_ENCODING = "vla.npy"
EGO_FRAME = "ego"  # the frame trajectories are published in (x forward, y left, z up; metres)

# Metadata record names
META_BUNDLE = "vla.bundle"
META_RUN = "vla.run"
META_MANIFEST = "vla.manifest"


@dataclass(frozen=True)
class SchemaDef:
    """An MCAP schema: name, encoding (protobuf, jsonschema, or empty for a schemaless channel) and data."""

    name: str
    encoding: str
    data: bytes


@dataclass(frozen=True)
class Message:
    """One message, ready for a file or the live view. ``channel_metadata`` is set on the channel when
    it is first written (e.g. a raw camera's pixel format)."""

    topic: str
    time_ns: int
    data: bytes
    encoding: str  # message encoding: protobuf, json, vla.npy
    schema: SchemaDef | None = None
    channel_metadata: dict[str, str] = field(default_factory=dict)
    sequence: int = 0  # the tick (``/tick`` …) or engine run (``/engine/…``) the message belongs to


def _json_schema(title: str) -> SchemaDef:
    return SchemaDef(title, "jsonschema", json.dumps({"title": title, "type": "object"}).encode())


JSON_SCHEMAS = {name: _json_schema(name) for name in
                ("vla.tick/2", "vla.ego-sample/1", "vla.command/1", "vla.run/1")}
_PROTO_CACHE: dict[str, SchemaDef] = {}


def foxglove_schema(cls: Any) -> SchemaDef:
    """The protobuf schema foxglove-sdk ships for one of its message classes."""
    name = cls.__name__
    if name not in _PROTO_CACHE:
        s = cls.get_schema()
        _PROTO_CACHE[name] = SchemaDef(s.name, s.encoding, bytes(s.data))
    return _PROTO_CACHE[name]


def _fg() -> Any:
    """foxglove-sdk's message classes (imported on first use: the vehicle install may lack it)."""
    import foxglove.messages as fg

    return fg


def _stamp(time_ns: int) -> Any:
    return _fg().Timestamp(sec=time_ns // 1_000_000_000, nsec=time_ns % 1_000_000_000)


def _proto(topic: str, time_ns: int, msg: Any) -> Message:
    return Message(topic, time_ns, msg.encode(), "protobuf", foxglove_schema(type(msg)))


# ---- tensors ---------------------------------------------------------------------------------------
def encode_tensor(array: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes (dtype, shape and data; never a pickled object)."""
    if array.dtype.hasobject:
        raise TypeError("object arrays are not recorded")
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_tensor(data: bytes) -> np.ndarray:
    """The array of ``encode_tensor``; a malformed message raises ``ValueError``."""
    try:
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"not a tensor message ({exc})") from None


def tensor_message(topic: str, time_ns: int, array: np.ndarray, sequence: int = 0,
                   metadata: dict[str, str] | None = None) -> Message:
    """A tensor; ``sequence`` is the engine run it belongs to (or the tick, for raw camera frames)."""
    return Message(topic, time_ns, encode_tensor(array), TENSOR_ENCODING, None, dict(metadata or {}), sequence)


# ---- JSON ------------------------------------------------------------------------------------------
def json_message(topic: str, time_ns: int, obj: dict[str, Any], schema: str, sequence: int = 0) -> Message:
    return Message(topic, time_ns, json.dumps(obj, separators=(",", ":")).encode(), "json", JSON_SCHEMAS[schema],
                   sequence=sequence)


def decode_json(data: bytes) -> dict[str, Any]:
    """A JSON message as a dict; anything else raises ``ValueError``."""
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("a JSON message must be an object")
    return obj


# ---- Foxglove views --------------------------------------------------------------------------------
def _quat_yaw(yaw: float) -> Any:
    fg = _fg()
    return fg.Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2.0), w=math.cos(yaw / 2.0))


def poses_message(time_ns: int, points: np.ndarray) -> Message:
    """The trajectory (rows x, y, yaw, ...) as foxglove.PosesInFrame in the ego frame."""
    fg = _fg()
    poses = [fg.Pose(position=fg.Vector3(x=float(p[0]), y=float(p[1]), z=0.0), orientation=_quat_yaw(float(p[2])))
             for p in points]
    return _proto(TRAJECTORY, time_ns, fg.PosesInFrame(timestamp=_stamp(time_ns), frame_id=EGO_FRAME, poses=poses))


STATUS_COLORS = {"ok": (0.1, 0.85, 0.2), "late": (1.0, 0.75, 0.0), "fallback": (1.0, 0.45, 0.0),
                 "fault": (0.95, 0.1, 0.1)}


def scene_message(time_ns: int, points: np.ndarray, status: str, topic: str = SCENE,
                  entity: str = "trajectory") -> Message:
    """The trajectory as a line strip on the ground (foxglove.SceneUpdate), coloured by status: the 3D
    panel draws it, and an image panel projects it into a camera through ``/tf`` and the calibration."""
    fg = _fg()
    r, g, b = STATUS_COLORS.get(status, (0.6, 0.6, 0.6))
    line = fg.LinePrimitive(type=fg.LinePrimitiveLineType.LineStrip, thickness=0.25, scale_invariant=False,
                            points=[fg.Point3(x=float(p[0]), y=float(p[1]), z=0.0) for p in points],
                            color=fg.Color(r=r, g=g, b=b, a=1.0))
    ent = fg.SceneEntity(timestamp=_stamp(time_ns), frame_id=EGO_FRAME, id=entity, lines=[line],
                         frame_locked=True)
    return _proto(topic, time_ns, fg.SceneUpdate(entities=[ent]))


def image_from_input(tensor: np.ndarray, index: int, layout: str, color: str) -> np.ndarray:
    """Camera ``index`` of a model's camera input (batch 1: [1, N, C, H, W] or [1, N, H, W, C]) as an
    HxWx3 BGR uint8 image for viewing. Float inputs (normalised outside the graph) are stretched."""
    img = tensor[0, index]
    if layout.upper() == "NCHW":
        img = np.moveaxis(img, 0, -1)
    if img.dtype != np.uint8:
        lo, hi = float(np.min(img)), float(np.max(img))
        img = ((img - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8)
    if img.ndim == 2 or img.shape[-1] == 1:
        return cv2.cvtColor(img.reshape(img.shape[0], img.shape[1]), cv2.COLOR_GRAY2BGR)
    return img[..., ::-1] if color.upper() == "RGB" else img


def jpeg_message(name: str, time_ns: int, bgr: np.ndarray, quality: int = 85) -> Message:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"camera '{name}': JPEG encoding failed")
    fg = _fg()
    msg = fg.CompressedImage(timestamp=_stamp(time_ns), frame_id=name, data=buf.tobytes(), format="jpeg")
    return _proto(CAMERA.format(name), time_ns, msg)


def rig_cameras(names: Sequence[str], sizes: Mapping[str, tuple[int, int]]) -> list[Camera]:
    """Where each camera sits and looks, for projecting the trajectory into its image: the synthetic and
    simulated rig's own geometry (``scene.Rig``: known names at their yaws, 1.5 m up, 100 degree field of
    view), each at its input size. A real rig's mounts are not in the manifest: for it this is a view, not
    a measurement."""
    return [Rig(names, *sizes[n]).cameras[i] for i, n in enumerate(names)]


def tf_message(time_ns: int, cameras: Iterable[Camera]) -> Message:
    """Ego -> each camera's optical frame (x right, y down, z forward), for image projection."""
    fg = _fg()
    transforms = []
    for c in cameras:
        # Optical frame in the ego frame: z_opt = forward(yaw), x_opt = right(yaw), y_opt = down; then the
        # camera's pitch (down positive) turns z_opt towards the ground.
        cy, sy = math.cos(c.yaw), math.sin(c.yaw)
        rot = np.array([[sy, 0.0, cy], [-cy, 0.0, sy], [0.0, -1.0, 0.0]])  # columns: x_opt, y_opt, z_opt
        cp, sp = math.cos(c.pitch), math.sin(c.pitch)
        rot = rot @ np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
        q = _rotation_quaternion(rot)
        transforms.append(fg.FrameTransform(timestamp=_stamp(time_ns), parent_frame_id=EGO_FRAME, child_frame_id=c.name,
                                            translation=fg.Vector3(x=0.0, y=0.0, z=c.mount_height),
                                            rotation=fg.Quaternion(x=q[0], y=q[1], z=q[2], w=q[3])))
    return _proto(TF, time_ns, fg.FrameTransforms(transforms=transforms))


def _rotation_quaternion(r: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a rotation matrix."""
    w = math.sqrt(max(0.0, 1.0 + r[0, 0] + r[1, 1] + r[2, 2])) / 2.0
    x = math.copysign(math.sqrt(max(0.0, 1.0 + r[0, 0] - r[1, 1] - r[2, 2])) / 2.0, r[2, 1] - r[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1.0 - r[0, 0] + r[1, 1] - r[2, 2])) / 2.0, r[0, 2] - r[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1.0 - r[0, 0] - r[1, 1] + r[2, 2])) / 2.0, r[1, 0] - r[0, 1])
    return x, y, z, w


def calibration_message(time_ns: int, cam: Camera) -> Message:
    """``cam``'s pinhole model at the image size the model sees (square pixels, centred)."""
    fg = _fg()
    f, w, h = cam.focal, cam.width, cam.height
    cx, cy = w / 2.0, h / 2.0
    msg = fg.CameraCalibration(timestamp=_stamp(time_ns), frame_id=cam.name, width=w, height=h,
                               distortion_model="plumb_bob", D=[0.0] * 5, K=[f, 0, cx, 0, f, cy, 0, 0, 1],
                               R=[1, 0, 0, 0, 1, 0, 0, 0, 1], P=[f, 0, cx, 0, 0, f, cy, 0, 0, 0, 1, 0])
    return _proto(CALIBRATION.format(cam.name), time_ns, msg)


def health_message(time_ns: int, event: str) -> Message:
    """A health event (``fault: …``, ``recovered …``) as foxglove.Log."""
    fg = _fg()
    level = getattr(fg.LogLevel, "Error" if event.startswith("fault") else "Info")
    return _proto(HEALTH, time_ns, fg.Log(timestamp=_stamp(time_ns), level=level, message=event, name="vla-run"))
