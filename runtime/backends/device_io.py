"""What the GPU data path needs from a device backend (torch on CUDA, TensorRT): ``DeviceIO``.

The loop's GPU path (``runtime/loop/device_path.py``) keeps everything but raw camera bytes and the
chosen trajectory on the device. For that it needs, from the backend that owns the stream and the
engine's buffers:

- the stream every run is enqueued on, so the preprocess kernels are ordered before the engine and
  the decode kernel after it, with no synchronisation in between;
- the device buffers of inputs the kernels write (which the backend then stops uploading) and of
  outputs the decode reads (which the backend then stops copying back);
- pinned staging buffers and asynchronous copies for the raw frames in and the result out;
- its run enqueued without a wait (``enqueue_run``), so a tick's device work is one sequence on the
  stream, and stream capture of that sequence into a CUDA graph (``capture``), with ``run_key``
  saying when a captured graph no longer matches what the backend would enqueue.

Device arrays are handed over as objects with ``__cuda_array_interface__`` (what ``vla.kernels``
reads): torch tensors on the torch backend, :class:`DeviceArray` views of ``cudaMalloc`` memory on
TensorRT. :class:`DeviceArray` is pure Python and tested anywhere; the rest needs a GPU.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import numpy as np


class DeviceArray:
    """A C-contiguous device buffer (address, shape, dtype) that the kernels can read and write.

    Indexing with integers on the leading axes gives the sub-array (a camera's slot of a batched
    input), as NumPy would, without touching the memory.
    """

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: Any, owner: Any = None) -> None:
        self.ptr, self.shape, self.dtype = int(ptr), tuple(int(d) for d in shape), np.dtype(dtype)
        self.owner = owner  # whatever keeps the memory alive

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3,
                "strides": None}

    def __getitem__(self, index: int | tuple[int, ...]) -> DeviceArray:
        idx = index if isinstance(index, tuple) else (index,)
        if not all(isinstance(i, (int, np.integer)) for i in idx) or len(idx) > len(self.shape):
            raise IndexError(f"DeviceArray takes integer indices on its leading axes, got {index!r}")
        offset = 0
        for axis, i in enumerate(idx):
            size = self.shape[axis]
            if not -size <= i < size:
                raise IndexError(f"index {i} is out of range for axis {axis} of size {size}")
            stride = int(np.prod(self.shape[axis + 1:], dtype=np.int64)) * self.dtype.itemsize
            offset += (int(i) % size) * stride
        return DeviceArray(self.ptr + offset, self.shape[len(idx):], self.dtype, self.owner)

    def __repr__(self) -> str:
        return f"DeviceArray(0x{self.ptr:x}, shape={self.shape}, dtype={self.dtype})"


class DeviceIO(ABC):
    """A device backend's buffers and stream, as the GPU data path uses them (see the module doc)."""

    @property
    @abstractmethod
    def stream(self) -> Any:
        """The backend's stream: a handle, or an object with ``.cuda_stream`` (what ``vla.kernels`` takes)."""

    @abstractmethod
    def input(self, name: str) -> Any:
        """Input ``name``'s device buffer; the caller writes it on the stream, so the backend stops
        uploading the host buffer (until ``feed(name)`` is called again)."""

    @abstractmethod
    def output(self, name: str) -> Any:
        """Output ``name``'s device buffer as the last run wrote it (valid until the next run)."""

    @abstractmethod
    def host_outputs(self, names: Iterable[str]) -> None:
        """Copy only these outputs back to the host at the end of each run (the others stay on the device)."""

    def host_output(self, name: str) -> np.ndarray:
        """The host array output ``name`` comes back into when ``host_outputs`` names it (after a run)."""
        raise NotImplementedError(f"{type(self).__name__} does not bring outputs back to the host")

    @abstractmethod
    def staging(self, shape: tuple[int, ...], dtype: Any) -> tuple[Any, np.ndarray]:
        """A device buffer and a pinned host buffer (a NumPy view) of one shape and dtype."""

    @abstractmethod
    def upload(self, device: Any, host: np.ndarray) -> None:
        """Enqueue the copy of pinned ``host`` into ``device`` on the stream (no wait)."""

    @abstractmethod
    def download(self, host: np.ndarray, device: Any) -> None:
        """Enqueue the copy of ``device`` into pinned ``host`` on the stream (no wait)."""

    @abstractmethod
    def synchronize(self) -> None:
        """Wait for everything enqueued on the stream."""

    # ---- the run, and CUDA graphs of a whole tick ----------------------------------------------------
    @abstractmethod
    def enqueue_run(self) -> None:
        """Enqueue one run of the engine on the stream and return without waiting: the inputs the host
        still feeds go up, the engine runs, the outputs named in ``host_outputs`` come down. The
        backend's own engine-only CUDA graph is not used: the caller may be capturing a larger one."""

    @abstractmethod
    def finish_run(self) -> None:
        """After the stream has reached the end of a run (eager or replayed): the backend's bookkeeping
        of a finished run (e.g. that ``commit_state`` now has a run to commit)."""

    @abstractmethod
    def run_key(self) -> Hashable:
        """What ``enqueue_run`` would bake into a captured graph (buffer addresses, which inputs are
        uploaded, which outputs come back): a graph captured under another key must not be replayed."""

    @abstractmethod
    def capture(self, work: Callable[[], None]) -> CapturedGraph:
        """Record ``work``'s launches on the stream into an executable graph; nothing runs yet.
        Raises :class:`CaptureError` with the reason when the work cannot be captured."""


class CaptureError(RuntimeError):
    """A stream capture that failed; the message says why (the caller falls back to plain launches)."""


class CapturedGraph(ABC):
    """An instantiated CUDA graph of a tick's device work."""

    @abstractmethod
    def launch(self) -> None:
        """Enqueue the whole graph on the stream it was captured on (no wait)."""

    @abstractmethod
    def close(self) -> None:
        """Free the graph (idempotent)."""
