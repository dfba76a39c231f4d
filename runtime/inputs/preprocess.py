"""Raw camera frames -> the engine's camera slots, with the fused ``vla.kernels`` preprocess kernel.

One pass per camera: colour conversion (BT.601 limited range, as V4L2/USB cameras deliver), a
centred crop to the model's aspect ratio, a bilinear resize, normalisation when the graph does not
do it, and the layout, written straight into the slot of the batched input. The CPU twin runs
here; the CUDA kernel runs the same arithmetic on device buffers (``device_path.DeviceTick``).

All cameras of a tick go through one native call (``preprocess_start``, then ``wait``): the
kernel's constants are worked out once per camera and frame size, not per tick, and the rig's rows
are shared by one team of threads whose helpers start at once, while the loop thread fills the other
inputs before it joins in. The call uses every core: it runs only while the engine is idle (a tick
whose engine is still busy falls back without preprocessing), so the engine's cores are free.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vla.kernels import PreparedPreprocess, prepare, preprocess_start
from vla.kernels.preprocess import centre_crop

from ..backends.device_io import DeviceIO
from ..cpu import usable_cores
from ..errors import CameraError
from .sources.base import PIXEL_FORMATS, Frame


class CameraPreprocessing:
    """How one camera's frames become ``out`` (its [3, H, W] or [H, W, 3] slot of the input)."""

    def __init__(self, name: str, camera: dict[str, Any], out: Any) -> None:
        if camera["color"] == "GRAY":
            raise CameraError("GRAY camera inputs are not supported by the preprocessing kernel yet")
        self.name, self.out = name, out
        self.layout = "chw" if camera["layout"] == "NCHW" else "hwc"
        self.channel_order = camera["color"].lower()
        norm = camera.get("normalization")
        apply = norm is not None and not norm["in_graph"]
        self.mean = norm["mean"] if apply else 0.0
        self.std = norm["std"] if apply else 1.0
        shape = tuple(out.shape)
        self.out_h, self.out_w = shape[1:3] if self.layout == "chw" else shape[0:2]
        self._prepared: dict[tuple[str, int, int], PreparedPreprocess] = {}

    def prepared(self, frame: Frame) -> PreparedPreprocess:
        """The kernel set-up for this frame's format and size (worked out once, then reused)."""
        key = (frame.fmt, frame.width, frame.height)
        found = self._prepared.get(key)
        if found is None:  # a camera may change size or format (a reconnect, a new mode)
            if frame.fmt not in PIXEL_FORMATS:
                raise CameraError(f"camera '{self.name}': pixel format {frame.fmt!r} is not supported")
            roi = centre_crop(frame.width, frame.height, self.out_w, self.out_h)
            try:
                found = prepare(frame.fmt, self.out, (frame.width, frame.height), roi=roi, mean=self.mean,
                                std=self.std, layout=self.layout, channel_order=self.channel_order)
            except ValueError as exc:
                raise CameraError(f"camera '{self.name}': cannot preprocess its frames ({exc})") from None
            self._prepared[key] = found
        return found


class RigPreprocessor:
    """Converts one frame of every camera into the engine's camera inputs in one native call.

    Built with ``device`` (the GPU data path, ``runtime/loop/device_path.py``), the cameras' outputs are
    the engine's device buffers, and ``DeviceTick`` launches the CUDA kernel on them; ``start`` and
    ``__call__`` are the host path.
    """

    def __init__(self, cameras: list[CameraPreprocessing], threads: int | None = None) -> None:
        self.cameras = cameras
        self.threads = threads or usable_cores()  # the engine is idle while this runs

    @classmethod
    def for_backend(cls, backend: Any, threads: int | None = None, device: DeviceIO | None = None) -> RigPreprocessor:
        """One camera per name in the manifest's camera inputs, each writing its slot of the input:
        the host buffer (``feed``), or with ``device`` the engine's device buffer."""
        cams = []
        for spec in backend.manifest.inputs_with("camera"):
            buf = (device.input(spec.name) if device is not None else backend.feed(spec.name))[0]
            cams.extend(CameraPreprocessing(name, spec.detail, buf[i]) for i, name in enumerate(spec.detail["names"]))
        return cls(cams, threads)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def check(self, frames: Mapping[str, Frame]) -> list[tuple[PreparedPreprocess, Frame]]:
        """Every camera's kernel set-up with its frame, each frame checked against it; a bad frame
        is a CameraError naming its camera."""
        checked = []
        for cam in self.cameras:
            frame = frames[cam.name]
            prepared = cam.prepared(frame)
            try:
                prepared.check(frame.data)
            except ValueError as exc:
                raise CameraError(f"camera '{cam.name}': bad frame ({exc})") from None
            checked.append((prepared, frame))
        return checked

    def __call__(self, frames: Mapping[str, Frame]) -> None:
        """Preprocess ``frames[name]`` for every camera; a bad frame is a CameraError naming its camera."""
        self.start(frames).wait()

    def start(self, frames: Mapping[str, Frame]) -> Any:
        """Check every frame and start the conversion; ``.wait()`` on the result finishes it (the
        caller's thread joins the helpers there, so it can fill other inputs first). The frames are
        checked once, by ``preprocess_start``; its ``jobs[i]`` errors are turned into camera names."""
        jobs = [(cam.prepared(frames[cam.name]), frames[cam.name].data) for cam in self.cameras]
        try:
            return preprocess_start(jobs, threads=self.threads)
        except ValueError as exc:
            text = str(exc)
            if text.startswith("jobs["):  # "jobs[i]: ..." names the camera's position
                index, _, rest = text[5:].partition("]: ")
                if index.isdigit() and int(index) < len(self.cameras):
                    raise CameraError(f"camera '{self.cameras[int(index)].name}': bad frame ({rest})") from None
            raise CameraError(f"bad frame ({text})") from None
