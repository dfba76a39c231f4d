"""Input sets that look like driving, for calibration and for the accuracy gate's held-out set.

Random tensors are poor stand-ins for both: quantisation ranges calibrated on noise images and a
zero memory are not the ranges a car sees, and an accuracy figure measured on them says little.
So each input set here comes from a *drive*: the synthetic road rendered by every camera of the
manifest at the model's own resolution, the ego history of that drive, a route command the model
takes (``vla-export --command``, else its own phrases that fit and its default), seeded noise,
and recurrent state rolled forward by running the FP32 model on the drive's earlier ticks (so
``memory`` holds real scene tokens, as it would on the road).

Camera pictures come from a ``FrameSource``: the synthetic renderer by default, or a folder of
recorded images (``calibration.ImageFolder``). Drives with different seeds give independent
sets: calibration and held-out sets never share a seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

from vla.runtime.inputs.commands import CommandEncoder
from vla.runtime.inputs.ego import EgoFeed
from vla.runtime.inputs.feeds import example_feed
from vla.runtime.inputs.preprocess import CameraPreprocessing, RigPreprocessor
from vla.runtime.inputs.sources.base import Frame
from vla.runtime.inputs.sources.scene import Rig, Road, SceneRenderer
from vla.runtime.manifest import Manifest, TensorSpec

#: Runs the FP32 model: feeds in, outputs by name (used to roll the recurrent state forward).
StepFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

TICK_HZ = 10.0


class FrameSource(Protocol):
    """Camera pictures for one drive: ``frame(t)`` gives camera name -> RGB [H, W, 3] uint8;
    ``advance()`` is called after each kept set (recorded stills move on to their next sample)."""

    def frame(self, t: float) -> dict[str, np.ndarray]: ...

    def advance(self) -> None: ...


class SyntheticDrive:
    """The procedural road (``vla.runtime.inputs.sources.scene``) rendered at the model's resolution."""

    def __init__(self, names: list[str], width: int, height: int, seed: int) -> None:
        self.road = Road(seed)
        self.renderer = SceneRenderer(self.road, Rig(names, width, height), "rgb")
        self._out = {n: np.empty(self.renderer.shape, dtype=np.uint8) for n in names}

    def frame(self, t: float) -> dict[str, np.ndarray]:
        self.renderer.render(t, self._out)
        return self._out

    def advance(self) -> None:
        """A road is a drive: nothing to move on to between sets."""


def _camera_spec(manifest: Manifest) -> TensorSpec | None:
    cams = manifest.inputs_with("camera")
    return cams[0] if cams else None


def _camera_writer(spec: TensorSpec, out: np.ndarray) -> Callable[[dict[str, np.ndarray]], None]:
    """RGB HWC pictures -> the camera input, exactly as the runtime feeds a frame
    (``runtime/inputs/preprocess.py``): centre crop, resize, channel order, layout, and the manifest's
    normalisation when the graph does not do it, so calibration and the gate see what the engine sees."""
    cams = [CameraPreprocessing(name, spec.detail, out[0, i]) for i, name in enumerate(spec.detail["names"])]
    rig = RigPreprocessor(cams, threads=1)

    def write(pictures: dict[str, np.ndarray]) -> None:
        rig({n: Frame(camera=n, data=img, fmt="rgb", width=img.shape[1], height=img.shape[0], seq=0,
                      capture_time=0.0) for n, img in pictures.items()})

    return write


def _commands(encoder: CommandEncoder, command: str | None) -> list[str]:
    """``command`` when given; else those the model takes as they are (its own phrases that fit, the default)."""
    if command is not None:
        return [command]
    return encoder.accepted()


def drive_feeds(manifest: Manifest, step: StepFn, *, seed: int, ticks: int, warmup_ticks: int = 4,
                start_s: float | None = None, frames: FrameSource | None = None,
                command: str | None = None) -> Iterator[dict[str, np.ndarray]]:
    """``ticks`` input sets of one drive at 10 Hz, after ``warmup_ticks`` that only fill the state.

    Inputs are filled by role: cameras from ``frames`` (default: the synthetic road of ``seed``),
    every ego input from the drive's motion (its declared fields, in their order), command and text
    from one route command (``command``, else one the model takes as it is), noise seeded, state from
    the model's own outputs; anything else gets ``vla.runtime.inputs.feeds.example_feed``. Yields fresh
    arrays each tick.
    """
    rng = np.random.default_rng(seed)
    cam = _camera_spec(manifest)
    if frames is None and cam is not None:
        frames = SyntheticDrive(cam.detail["names"], cam.detail["width"], cam.detail["height"], seed)
    road = frames.road if isinstance(frames, SyntheticDrive) else Road(seed)
    t0 = float(rng.uniform(0.0, 40.0)) if start_s is None else start_s
    feeds = {t.name: example_feed(t, manifest, rng) for t in manifest.inputs}
    for t in manifest.inputs_with("state"):
        feeds[t.name][...] = t.detail["initial"]
    encoder = CommandEncoder(manifest)
    commands = _commands(encoder, command)
    if commands:  # notes (a command cut or replaced) were said once by the caller: not once per drive
        encoder.write(encoder.encode(commands[int(rng.integers(len(commands)))]), feeds.__getitem__)
    ego_specs = manifest.inputs_with("ego")
    history = EgoFeed.for_specs(ego_specs, lambda t: feeds[t.name][0]) if ego_specs else None
    # Ego history before the first tick, so tick 0 already has a full past (the longest input's).
    if history is not None:
        longest = max(history.histories, key=lambda h: h.steps * h.period)
        for k in range(longest.steps + 1, 0, -1):
            _ego_update(history, road, t0 - k * longest.period)
    write_cameras = _camera_writer(cam, feeds[cam.name]) if cam is not None and frames is not None else None
    for k in range(warmup_ticks + ticks):
        t = t0 + k / TICK_HZ
        if write_cameras is not None:
            write_cameras(frames.frame(max(t, 0.0)))
        if history is not None:
            _ego_update(history, road, t)
            history.fill()
        for spec in manifest.inputs_with("noise"):
            feeds[spec.name][...] = rng.standard_normal(spec.shape).astype(spec.dtype) * spec.detail.get("std", 1.0)
        if k >= warmup_ticks:
            yield {name: arr.copy() for name, arr in feeds.items()}
        if manifest.inputs_with("state"):
            outputs = step(feeds)
            for spec in manifest.inputs_with("state"):
                feeds[spec.name][...] = outputs[spec.detail["from_output"]]


def _ego_update(history: EgoFeed, road: Road, t: float) -> None:
    pose = road.ego_at(max(t, 0.0))
    history.update(t, pose.speed, pose.accel, pose.yaw_rate)


def scene_sets(manifest: Manifest, step: StepFn, *, count: int, seed: int, ticks_per_drive: int = 4,
               stride: int = 5, frames_for: Callable[[int], FrameSource | None] | None = None,
               command: str | None = None) -> list[dict[str, np.ndarray]]:
    """``count`` input sets from ``ceil(count / ticks_per_drive)`` drives, ``stride`` ticks apart.

    Drive ``d`` uses seed ``seed + d``; consecutive kept ticks are ``stride`` ticks (0.5 s) apart
    so one drive still gives varied scenes. The frame source is advanced after each kept set, so
    recorded images give every set a sample of its own.
    """
    sets: list[dict[str, np.ndarray]] = []
    drive = 0
    while len(sets) < count:
        frames = frames_for(drive) if frames_for else None
        kept = 0
        for i, feeds in enumerate(drive_feeds(manifest, step, seed=seed + drive,
                                               ticks=ticks_per_drive * stride, frames=frames, command=command)):
            if i % stride == stride - 1:
                sets.append(feeds)
                kept += 1
                if frames is not None:  # None: drive_feeds renders the synthetic road itself
                    frames.advance()
                if len(sets) == count:
                    break
        drive += 1
        if kept == 0:
            break
    return sets
