"""``synthetic://`` cameras: the procedural road scene rendered by a rig in its own process.

Why a process: a real camera captures on its own clock, whatever the consumer does, and rendering
three 720p views at 30 fps costs about a third of a core that must not steal the GIL from the
inference loop. The child renders every camera of the rig from one clock (a synchronised rig: all
views of a rig frame share ``seq`` and ``capture_time``) straight into shared-memory slots; the
sources in the parent only copy the newest slot out, so ``newest()`` never blocks.

URI grammar (every parameter optional)::

    synthetic://[?size=WxH&fps=30&format=yuyv&seed=0&hfov=100
                 &drop_every=K&stall_after=N&stall_ms=M&nice=10]

Without ``size`` the rig renders the size the model takes (``open_cameras`` passes it from the
manifest, e.g. 256x128 for the reference model), else 1280x720: pixels the preprocessing would
only scale away cost the rig CPU and the loop delivery time. Ask for a camera's real size (e.g.
``size=1280x720``) to exercise the preprocessing's resize as a real camera would.

Frame clock: frame ``seq`` (1, 2, ...) is exposed at ``capture_time = t0 + (seq - 1) / fps`` on
``time.monotonic()`` (CLOCK_MONOTONIC, shared by all processes on Linux) and published once
rendered. ``seq`` counts sensor frames, so every lost frame shows up as a gap: ``drop_every=K``
loses the frames whose ``seq`` is a multiple of K; ``stall_after=N`` delivers nothing after frame N
for ``stall_ms`` milliseconds (default: for good; the process stays alive, like a hung driver) and
then resumes on the same clock; a renderer that falls behind skips to the current frame.

CPU: a real camera costs the host nothing, but the rig renders (about 40% of a core for three 720p
views at 30 fps), so by default it runs at ``nice=10`` and yields the CPU to the loop, whose jitter
it would otherwise set; ``nice=0`` makes it compete as an equal (a stress test).

Shared memory: a header (index of the newest published slot) and a ring of slots, each holding
the frame metadata (seq, capture time, ego speed/accel/yaw rate, the 64x3 ground-truth future
path) and one image per camera. Each slot is a seqlock: the writer makes its generation odd,
writes, makes it even, then publishes the slot; a reader copies and retries if the generation
moved. Stores from separate Python statements are far apart in time compared with any CPU's store
buffer, and a slot is only reused three frames after it was published.

Processes are started with the 'spawn' method (never fork: the parent may hold ONNX Runtime and
OpenCV threads). The child's entry point lives in this module, so the parent's ``__main__`` is hidden
while it starts: a user's script, notebook or ``python - <<EOF`` needs no ``if __name__ ==
"__main__":`` guard to open a synthetic camera.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import re
import signal
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as mp_wait
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ...errors import CameraError
from .base import PIXEL_FORMATS, CameraSource, EgoState, End, Frame
from .scene import Rig, Road, SceneRenderer, frame_shape
from .uri import invalid, query_params

TRUTH_STEPS, TRUTH_DT = 64, 0.1  # ground-truth horizon: 6.4 s at 10 Hz
N_SLOTS = 4
_HEADER_BYTES = 64
_META_BYTES = 1024  # per slot: 2 int64 + 6 float64 + truth (64x3 float32 = 768 B)
_ALIGN = 64
_PARAMS = ("size", "fps", "format", "seed", "hfov", "drop_every", "stall_after", "stall_ms", "nice")


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


@dataclass(frozen=True)
class SyntheticParams:
    """A parsed ``synthetic://`` URI."""

    width: int = 1280
    height: int = 720
    fps: float = 30.0
    fmt: str = "yuyv"
    seed: int = 0
    hfov: float = 100.0
    drop_every: int | None = None
    stall_after: int | None = None
    stall_ms: float | None = None  # None: the stall lasts for good
    # A hardware camera costs the host no CPU; the rig has to render, so it yields to the loop.
    nice: int = 10


def renderable_size(width: int, height: int) -> tuple[int, int]:
    """The nearest size every pixel format can render at or above (width, height): even, >= 16."""
    return max(16, width + width % 2), max(16, height + height % 2)


def parse_uri(uri: str, default_size: tuple[int, int] | None = None) -> SyntheticParams:
    """Parse and validate a ``synthetic://`` URI; every mistake is a CameraError naming the key.

    ``default_size`` (width, height) is what the rig renders when the URI gives no ``size``: the
    model's own input size, so no CPU goes into pixels the preprocessing would throw away."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "synthetic":
        raise CameraError(f"camera URI {uri!r} is not a synthetic:// URI")
    if parts.netloc or parts.path not in ("", "/") or parts.fragment:
        raise CameraError(
            f"camera URI {uri!r}: synthetic:// takes only query parameters, e.g. synthetic://?size=1280x720&fps=30"
        )
    seen = query_params(uri, parts.query, _PARAMS)

    def bad(key: str, accepted: str) -> CameraError:
        return invalid(uri, key, seen[key], accepted)

    def number(key: str, kind: type, lo: float, hi: float, accepted: str) -> Any:
        try:
            v = kind(seen[key])
        except ValueError:
            raise bad(key, accepted) from None
        if not (lo <= v <= hi) or (kind is float and not math.isfinite(v)):
            raise bad(key, accepted)
        return v

    kw: dict[str, Any] = {}
    if "size" in seen:
        m = re.fullmatch(r"(\d{1,5})x(\d{1,5})", seen["size"])
        accepted = "WIDTHxHEIGHT, e.g. 1280x720 (16..8192, width even; height even for nv12/i420)"
        if not m:
            raise bad("size", accepted)
        kw["width"], kw["height"] = int(m[1]), int(m[2])
        if not (16 <= kw["width"] <= 8192 and 16 <= kw["height"] <= 8192):
            raise bad("size", accepted)
    elif default_size is not None:
        kw["width"], kw["height"] = renderable_size(*default_size)
    if "fps" in seen:
        kw["fps"] = number("fps", float, 0.5, 240.0, "a frame rate in 0.5..240")
    if "format" in seen:
        if seen["format"].lower() not in PIXEL_FORMATS:
            raise bad("format", ", ".join(PIXEL_FORMATS))
        kw["fmt"] = seen["format"].lower()
    if "seed" in seen:
        kw["seed"] = number("seed", int, 0, 2**32 - 1, "an integer in 0..4294967295")
    if "hfov" in seen:
        kw["hfov"] = number("hfov", float, 10.0, 170.0, "horizontal field of view in degrees, 10..170")
    if "drop_every" in seen:
        kw["drop_every"] = number("drop_every", int, 2, 10**9, "an integer >= 2 (every K-th frame is lost)")
    if "stall_after" in seen:
        kw["stall_after"] = number("stall_after", int, 1, 10**9, "a frame count >= 1")
    if "stall_ms" in seen:
        if "stall_after" not in seen:
            raise CameraError(f"camera URI {uri!r}: stall_ms needs stall_after=N (the frame the stall follows)")
        kw["stall_ms"] = number("stall_ms", float, 0.0, 1e9, "a duration in milliseconds >= 0")
    if "nice" in seen:
        kw["nice"] = number("nice", int, 0, 19, "a niceness 0..19 added to the rig process's (0: compete as an equal)")
    params = SyntheticParams(**kw)
    try:
        frame_shape(params.fmt, params.width, params.height)
    except CameraError as exc:
        raise CameraError(f"camera URI {uri!r}: {exc}") from None
    return params


# ==================================================================================================
# Shared-memory layout (both processes build the same views from the same numbers)
# ==================================================================================================


class _Layout:
    """Offsets of the header, the slots and each camera's image inside the shared block."""

    def __init__(self, params: SyntheticParams, n_cams: int) -> None:
        self.shape = frame_shape(params.fmt, params.width, params.height)
        self.image_bytes = int(np.prod(self.shape))
        self.image_stride = _align(self.image_bytes)
        self.slot_bytes = _META_BYTES + n_cams * self.image_stride
        self.n_cams = n_cams
        self.size = _HEADER_BYTES + N_SLOTS * self.slot_bytes

    def views(self, buf: memoryview) -> dict[str, Any]:
        """Numpy views of every field (the only references the shared block ever exports)."""
        latest = np.ndarray((1,), np.int64, buf, 0)
        slots = []
        for k in range(N_SLOTS):
            base = _HEADER_BYTES + k * self.slot_bytes
            slots.append(
                {
                    "ints": np.ndarray((2,), np.int64, buf, base),  # gen, seq
                    "floats": np.ndarray((6,), np.float64, buf, base + 16),  # t, v, a, yaw rate, scene t
                    "truth": np.ndarray((TRUTH_STEPS, 3), np.float32, buf, base + 64),
                    "images": [
                        np.ndarray(self.shape, np.uint8, buf, base + _META_BYTES + c * self.image_stride)
                        for c in range(self.n_cams)
                    ],
                }
            )
        return {"latest": latest, "slots": slots}


# ==================================================================================================
# Child process
# ==================================================================================================


def _child_main(shm_name: str, params: SyntheticParams, names: list[str], conn: Connection) -> None:
    """Entry point of the rig process: report any failure as one line, then exit non-zero."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        import cv2

        cv2.setNumThreads(1)  # one core, beside the model
        # A real camera costs the host nothing: when the parent runs real-time (vla-run
        # --rt-priority), a child would inherit SCHED_FIFO and render as the engine's equal.
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        if params.nice:
            os.nice(params.nice)
        shm = SharedMemory(name=shm_name)
        _child_run(shm, params, names, conn)
        shm.close()
    except Exception as exc:
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        with contextlib.suppress(OSError):
            conn.send(f"synthetic camera process failed: {msg}")
        os._exit(1)  # no interpreter teardown: the traceback may still hold shared-memory views


def _child_run(shm: SharedMemory, params: SyntheticParams, names: list[str], conn: Connection) -> None:
    """Render frames on the real-time clock until the parent closes its end of ``conn`` or dies."""
    road = Road(params.seed)
    renderer = SceneRenderer(road, Rig(names, params.width, params.height, params.hfov), params.fmt)
    views = _Layout(params, len(names)).views(shm.buf)
    latest, slots = views["latest"], views["slots"]
    outputs = [dict(zip(names, slot["images"], strict=True)) for slot in slots]
    parent = mp.parent_process()
    watch: list[Any] = [conn] if parent is None else [conn, parent.sentinel]
    period = 1.0 / params.fps

    def sleep_until(when: float) -> bool:
        """Wait for a monotonic time; True when the rig must stop instead (stop or parent gone)."""
        timeout = None if when == math.inf else max(when - time.monotonic(), 0.0)
        return bool(mp_wait(watch, timeout=timeout))

    stall_after = math.inf if params.stall_after is None else params.stall_after
    slot, seq = -1, 0
    t0 = time.monotonic()
    while True:
        seq += 1
        now = time.monotonic()
        if now - (t0 + (seq - 1) * period) > period:  # fell behind: skip to the current frame
            seq = int((now - t0) / period) + 1
        if seq > stall_after:
            if params.stall_ms is None:  # stalled for good: stay alive, deliver nothing
                sleep_until(math.inf)
                return
            # Resume with the first frame exposed at least stall_ms after frame N (the stall is once).
            end = (stall_after - 1) * period + params.stall_ms / 1000.0
            seq = max(seq, math.ceil(end / period - 1e-9) + 1)
            stall_after = math.inf
        if params.drop_every is not None and seq % params.drop_every == 0:
            continue  # lost by the camera: the seq is used up, nothing is delivered
        capture = t0 + (seq - 1) * period
        if sleep_until(capture):
            return
        slot = (slot + 1) % N_SLOTS
        ints, floats = slots[slot]["ints"], slots[slot]["floats"]
        ints[0] += 1  # odd: being written
        scene_t = (seq - 1) * period
        pose = renderer.render(scene_t, outputs[slot])
        slots[slot]["truth"][...] = road.future_path(scene_t, TRUTH_STEPS, TRUTH_DT)
        ints[1] = seq
        floats[:5] = (capture, pose.speed, pose.accel, pose.yaw_rate, scene_t)
        ints[0] += 1  # even: complete
        latest[0] = slot


# ==================================================================================================
# Parent side
# ==================================================================================================


class _Resources:
    """Everything shutting the rig down needs; deliberately holds no reference to the rig."""

    def __init__(self, proc: BaseProcess, shm: SharedMemory, conn: Connection, views: dict[str, Any]) -> None:
        self.proc, self.shm, self.conn, self.views = proc, shm, conn, views
        self.error: str | None = None

    def poll_error(self) -> str | None:
        """A failure message the child sent, if any (kept once read)."""
        if self.error is None:
            try:
                if self.conn.poll():
                    self.error = str(self.conn.recv())
            except (EOFError, OSError):
                pass
        return self.error


def _shutdown(res: _Resources) -> None:
    """Stop the child promptly, then release and unlink the shared memory.

    Closing our end of the socket pair is the stop signal: unlike a multiprocessing.Event, it can
    never block on a child that was killed while waiting.
    """
    proc = res.proc
    res.conn.close()
    if proc.pid is not None:
        proc.join(timeout=2.0)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=1.0)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=1.0)
    res.views.clear()
    with contextlib.suppress(BufferError):  # a view escaped somewhere; the mapping goes when it does
        res.shm.close()
    with contextlib.suppress(FileNotFoundError):
        res.shm.unlink()


@contextlib.contextmanager
def _main_hidden_from_spawn():
    """Stop 'spawn' from re-running the parent's main script in the child.

    spawn re-imports ``__main__`` (by ``__spec__`` name or ``__file__``) before it calls the target;
    an unguarded script would then open cameras recursively, and ``<stdin>`` cannot be imported
    at all. The target here needs nothing from ``__main__``.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None  # spawn reads the attribute, so it must exist
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class _SyntheticRig:
    """One child process and its shared memory, shared by the rig's sources (refcounted)."""

    def __init__(self, uri: str, params: SyntheticParams, names: list[str]) -> None:
        self.uri, self.params, self.names = uri, params, names
        self.layout = _Layout(params, len(names))
        _check_shm_space(self.layout.size)
        ctx = mp.get_context("spawn")
        shm = SharedMemory(create=True, size=self.layout.size)  # zero-filled: no slot published
        views = self.layout.views(shm.buf)
        views["latest"][0] = -1
        # One socket pair: the child reports failures on it and stops when our end closes (EOF).
        ours, theirs = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=_child_main,
            args=(shm.name, params, names, theirs),
            name=f"synthetic-rig-{shm.name}",
            daemon=True,
        )
        self.res = _Resources(proc, shm, ours, views)
        # Runs at the last close, when the rig is garbage-collected, or at interpreter exit.
        self._finalizer = weakref.finalize(self, _shutdown, self.res)
        try:
            with _main_hidden_from_spawn():
                proc.start()
        except BaseException:
            self._finalizer()
            theirs.close()
            raise
        theirs.close()  # the child holds the only copy: a dead child reads as EOF
        self._lock = threading.Lock()
        self._open = len(names)

    @property
    def views(self) -> dict[str, Any]:
        """The shared-memory views; empty once the rig is shut down."""
        return self.res.views

    def wait_first_frame(self, timeout_s: float) -> None:
        """Block until the first frame is published; raise a one-line CameraError otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.views["latest"][0] >= 0:
                return
            err = self.res.poll_error()
            if err is not None:
                self.shutdown()
                raise CameraError(err)
            code = self.res.proc.exitcode
            if code is not None:
                self.shutdown()
                raise CameraError(f"synthetic camera process exited with code {code} before its first frame")
            if time.monotonic() > deadline:
                self.shutdown()
                raise CameraError(f"synthetic camera did not start within {timeout_s:g} s ({self.uri})")
            time.sleep(0.005)

    def ended(self) -> End | None:
        """Why the rig delivers no more frames (closed, failed, killed), else None."""
        if not self._finalizer.alive:
            return End("synthetic camera closed")
        err = self.res.poll_error()
        code = self.res.proc.exitcode
        if code is None:
            return None
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return End(err or f"synthetic camera process {how}")

    def release(self) -> None:
        """One source closed; the last one stops the child."""
        with self._lock:
            self._open -= 1
            last = self._open <= 0
        if last:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop the child and free the shared memory now (idempotent)."""
        self._finalizer()  # runs _shutdown once, whoever calls first


def _check_shm_space(size: int) -> None:
    """Fail clearly instead of SIGBUS later when /dev/shm (often 64 MB in containers) is too small."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < size:
        raise CameraError(
            f"synthetic camera needs {size / 2**20:.0f} MiB of shared memory but /dev/shm has "
            f"{free / 2**20:.0f} MiB free; use a smaller size/format or enlarge /dev/shm"
        )


class SyntheticSource(CameraSource):
    """One camera of a synthetic rig; ``newest()`` copies the newest slot without blocking."""

    provides_ego = True  # the rig knows the simulated vehicle's state at every frame

    def __init__(self, rig: _SyntheticRig, index: int) -> None:
        self._rig, self._index = rig, index
        self.name, self.uri = rig.names[index], rig.uri
        p = rig.params
        self._fmt, self._w, self._h = p.fmt, p.width, p.height
        self._data = np.empty(rig.layout.shape, dtype=np.uint8)
        self._truth = np.empty((TRUTH_STEPS, 3), dtype=np.float32)
        self._floats = np.empty(6, dtype=np.float64)
        self._frame: Frame | None = None
        self._closed = False

    def newest(self) -> Frame | None:
        """The newest frame (copied into this source's own buffer), or None before the first."""
        views = self._rig.views
        if self._closed or not views:
            return self._frame
        latest = views["latest"]
        for _ in range(100):
            k = int(latest[0])
            if k < 0:
                return None
            slot = views["slots"][k]
            ints = slot["ints"]
            gen = int(ints[0])
            if gen & 1:  # being rewritten: the writer lapped us; look again
                continue
            seq = int(ints[1])
            if self._frame is not None and seq == self._frame.seq and int(ints[0]) == gen:
                return self._frame  # nothing new: no copy
            np.copyto(self._data, slot["images"][self._index])
            np.copyto(self._truth, slot["truth"])
            np.copyto(self._floats, slot["floats"])
            if int(ints[0]) != gen or int(ints[1]) != seq:
                continue  # overwritten while copying
            f = self._floats
            self._frame = Frame(
                camera=self.name,
                data=self._data,
                fmt=self._fmt,
                width=self._w,
                height=self._h,
                seq=seq,
                capture_time=float(f[0]),
                ego=EgoState(speed=float(f[1]), accel=float(f[2]), yaw_rate=float(f[3])),
                truth=self._truth,
            )
            return self._frame
        return self._frame  # pathological contention: keep the previous frame

    def ended(self) -> End | None:
        """Why no more frames will come (the rig process died or was closed), else None."""
        return self._rig.ended()

    def close(self) -> None:
        """Release this camera; closing the rig's last open camera stops the process."""
        if self._closed:
            return
        self._closed = True
        self._rig.release()

    @property
    def pid(self) -> int | None:
        """The rig process's id (for monitoring its CPU use)."""
        return self._rig.res.proc.pid


def open_synthetic(uri: str, names: list[str], *, default_size: tuple[int, int] | None = None,
                   start_timeout_s: float = 30.0) -> list[SyntheticSource]:
    """Start one rig process rendering ``names`` and return one source per camera, in order.

    Blocks until the first rig frame is published, so ``newest()`` returns a frame at once; a
    process that fails or takes longer than ``start_timeout_s`` raises a one-line CameraError.
    ``default_size`` is rendered when the URI has no ``size`` (see ``parse_uri``).
    """
    params = parse_uri(uri, default_size)
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise CameraError(f"camera URI {uri!r}: camera names must be non-empty and unique, got {names}")
    rig = _SyntheticRig(uri, params, names)
    rig.wait_first_frame(start_timeout_s)
    return [SyntheticSource(rig, i) for i in range(len(names))]
