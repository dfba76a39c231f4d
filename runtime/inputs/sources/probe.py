"""What cameras this machine has, and which camera URI kinds it can serve (``vla-run --list-cameras``).

Why a module of its own: probing opens every /dev/video* node and imports every optional backend,
none of which belongs on the path that opens one camera. Every failure is kept as text, per device
and per backend, so the listing always prints: a busy or forbidden device shows its error, a
missing library says why and how to get it, and nothing ends in a traceback.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from glob import glob
from importlib.metadata import PackageNotFoundError, version

from ...errors import CameraError
from .v4l2 import Mode, V4l2Request, choose_mode, device_modes, linuxpy_video

AVAILABLE = "available"


@dataclass
class DeviceInfo:
    """One /dev/video* node as probed. ``note``: not a camera node (listed, not probed further);
    ``error``: it could not be opened or queried."""

    path: str
    driver: str = ""
    card: str = ""
    bus: str = ""
    modes: list[Mode] = field(default_factory=list)
    note: str | None = None
    error: str | None = None


def _natural(path: str) -> tuple[str, int]:
    m = re.search(r"(\d+)$", path)
    return (path[: m.start()], int(m[1])) if m else (path, -1)


def list_v4l2_devices(pattern: str = "/dev/video*") -> list[DeviceInfo]:
    """Every V4L2 node matching ``pattern``, in numeric order, each probed on its own."""
    return [probe_device(p) for p in sorted(glob(pattern), key=_natural)]


def probe_device(path: str) -> DeviceInfo:
    """Driver, card, bus and capture modes of one node; any failure becomes ``error`` text."""
    info = DeviceInfo(path)
    try:
        vd = linuxpy_video()
    except CameraError as exc:
        info.error = str(exc)
        return info
    try:
        dev = vd.Device(path, read_write=False)  # queries need no write access
        dev.open()
        try:
            info.driver, info.card, info.bus = dev.info.driver, dev.info.card, dev.info.bus_info
            caps = dev.info.device_capabilities
            if vd.Capability.VIDEO_CAPTURE in caps:
                info.modes = device_modes(dev)
            elif vd.Capability.META_CAPTURE in caps:
                info.note = "metadata node, not a camera"
            elif vd.Capability.VIDEO_CAPTURE_MPLANE in caps:
                info.note = "multi-planar capture node (read it with gst://v4l2src device=...)"
            else:
                info.note = "not a video capture node"
        finally:
            dev.close()
    except PermissionError:
        info.error = "permission denied (add your user to the 'video' group: sudo usermod -aG video $USER)"
    except OSError as exc:
        info.error = f"cannot query it ({exc.strerror or exc})"
    except Exception as exc:  # a driver linuxpy trips over: report it, keep listing the others
        info.error = f"cannot query it ({type(exc).__name__}: {exc})"
    return info


def _module_missing(module: str) -> str | None:
    if importlib.util.find_spec(f"{__package__}.{module}") is None:
        return f"missing: this vla build has no {module} source"
    return None


def _pkg_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _v4l2_row() -> tuple[str, str, str]:
    kind = "/dev/videoN, v4l2://"
    try:
        linuxpy_video()
    except CameraError as exc:
        return kind, "linuxpy", f"missing: {str(exc).split('not importable here: ')[-1]} (pip install linuxpy)"
    return kind, f"linuxpy {_pkg_version('linuxpy')}", _module_missing("v4l2") or AVAILABLE


def _gst_row() -> tuple[str, str, str]:
    from .gstreamer import INSTALL_HINT

    kind = "csi://, gst://"
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst

        Gst.init(None)
        gst_version = ".".join(map(str, Gst.version()[:3]))
    except Exception as exc:  # ImportError, ValueError (no typelib), GLib.Error (init)
        return kind, "GStreamer via PyGObject", f"missing: {exc} ({INSTALL_HINT})"
    return kind, f"GStreamer {gst_version} via PyGObject {gi.__version__}", _module_missing("gstreamer") or AVAILABLE


def _av_row() -> tuple[str, str, str]:
    kind = "rtsp://, http(s)://, lavfi://"
    try:
        import av
    except Exception as exc:
        return kind, "PyAV (FFmpeg)", f"missing: {exc} (pip install av)"
    ffmpeg = getattr(av, "ffmpeg_version_info", None)
    lib = f"PyAV {av.__version__}" + (f" (FFmpeg {ffmpeg})" if ffmpeg else " (FFmpeg)")
    return kind, lib, _module_missing("stream") or AVAILABLE


def _opencv_rows() -> list[tuple[str, str, str]]:
    kinds = ("video files (PATH, file://)", "image folders (DIR)")
    try:
        import cv2
    except Exception as exc:
        why = f"missing: {exc} (pip install opencv-python-headless)"
        return [(kinds[0], "OpenCV (FFmpeg backend)", why), (kinds[1], "OpenCV", why)]
    try:
        has_ffmpeg = cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG)
    except Exception:
        has_ffmpeg = False
    video = _module_missing("video") or (AVAILABLE if has_ffmpeg else "missing: this OpenCV is built without FFmpeg")
    return [
        (kinds[0], f"OpenCV {cv2.__version__} (FFmpeg backend)", video),
        (kinds[1], f"OpenCV {cv2.__version__}", _module_missing("images") or AVAILABLE),
    ]


def backend_report() -> list[tuple[str, str, str]]:
    """(URI kind, library serving it, "available" or "missing: why") for every kind of camera URI."""
    rows = [("synthetic://", "built in (NumPy)", _module_missing("synthetic") or AVAILABLE)]
    rows += [_v4l2_row(), _gst_row(), _av_row(), *_opencv_rows()]
    return rows


def _device_lines(dev: DeviceInfo) -> list[str]:
    what = dev.card or "?"
    if dev.driver or dev.bus:
        what += f" ({', '.join(p for p in (dev.driver, dev.bus) if p)})"
    if dev.error:
        return [f"  {dev.path}  error: {dev.error}"]
    if dev.note:
        return [f"  {dev.path}  {what}: {dev.note} (skipped)"]
    lines = [f"  {dev.path}  {what}"]
    if not dev.modes:
        return [*lines, "      no capture modes listed by the driver"]
    by_fourcc: dict[str, list[str]] = {}
    for m in dev.modes:
        size = str(m).split(" ", 1)[1]
        by_fourcc.setdefault(m.fourcc, []).append(size)
    lines += [f"      {fourcc:<5} {', '.join(sizes)}" for fourcc, sizes in by_fourcc.items()]
    try:
        lines.append(f"      default: {choose_mode(V4l2Request(dev.path), dev.modes)}")
    except CameraError as exc:
        lines.append(f"      default: none ({exc})")
    return lines


def format_camera_list(devices: list[DeviceInfo], report: list[tuple[str, str, str]]) -> str:
    """The text ``vla-run --list-cameras`` prints: the V4L2 devices, then every URI kind's backend."""
    lines = ["V4L2 devices:"]
    if not devices:
        lines.append("  no V4L2 devices (/dev/video* absent)")
    for dev in devices:
        lines += _device_lines(dev)
    lines += ["", "Camera URI kinds:"]
    w0 = max((len(k) for k, _, _ in report), default=0)
    w1 = max((len(lib) for _, lib, _ in report), default=0)
    lines += [f"  {kind:<{w0}}  {lib:<{w1}}  {status}" for kind, lib, status in report]
    return "\n".join(lines)


__all__ = ["DeviceInfo", "backend_report", "format_camera_list", "list_v4l2_devices", "probe_device"]
