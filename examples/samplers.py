"""Iterative samplers that export: a flow-matching policy (K Euler steps) and a DDIM policy (K steps).

torch.export traces one fixed computation. A sampler exports when its step count K is a Python int
fixed when the model is built, everything the schedule needs (time grid, alphas) is computed once in
``__init__`` and stored with ``register_buffer``, and ``forward`` unrolls the K steps with
``for k in range(self.steps)``. What does not export: calling a scheduler's ``set_timesteps`` in
``forward``, a scheduler object whose ``step()`` keeps a step index, loops whose length depends on
tensor values, NumPy in ``forward``. (README: "Iterative samplers".)

Both policies read one camera, the ego history and a ``noise`` input (the runtime fills it from
``--seed``), and turn the sampled actions into a speed and a curvature per mode, integrated into a
smooth trajectory: untrained weights still give trajectories within the runtime's plausibility limits.

    python examples/samplers.py OUT_DIR        # writes flow.pt and ddim.pt (seeded state_dicts)
    cd examples && vla-export OUT_DIR/flow.pt --factory samplers:flow_matching -o ../bundles/flow
    vla-run --engine bundles/flow --camera synthetic:// --duration 2
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import nn

MODES, POINTS, DT = 3, 20, 0.1  # 3 candidate trajectories of 20 points, 10 Hz: 2 s
HEIGHT, WIDTH, EGO_STEPS = 32, 64, 8
EGO_FIELDS = ["x", "y", "yaw", "v", "a", "yaw_rate"]


def io_spec(name: str, steps: int) -> dict:
    """The I/O spec vla-export reads (the model's ``io_spec()``): what each tensor is for the runtime."""
    return {
        "schema_version": 1,
        "model": {"name": name, "config": {"steps": steps}},
        "inputs": [
            {"name": "images", "dtype": "uint8", "role": "camera", "shape": [1, 1, 3, HEIGHT, WIDTH],
             "camera": {"names": ["front"], "layout": "NCHW", "color": "RGB", "height": HEIGHT, "width": WIDTH}},
            {"name": "ego", "dtype": "float32", "role": "ego", "shape": [1, EGO_STEPS, len(EGO_FIELDS)],
             "ego": {"fields": EGO_FIELDS, "rate_hz": 10.0, "frame": "ego"}},
            {"name": "noise", "dtype": "float32", "role": "noise", "shape": [1, MODES, 2],
             "noise": {"distribution": "normal", "std": 1.0}},
        ],
        "outputs": [
            {"name": "trajectory", "dtype": "float32", "role": "trajectory", "shape": [1, MODES, POINTS, 3],
             "trajectory": {"dt": DT, "horizon_s": round(DT * POINTS, 6), "frame": "ego",
                            "fields": ["x", "y", "yaw"]}},
            {"name": "score", "dtype": "float32", "role": "score", "shape": [1, MODES],
             "score": {"kind": "probability"}},
        ],
    }


class Context(nn.Module):
    """Camera + ego history -> one context vector (a stand-in for a real policy's encoder)."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 8, stride=8), nn.GELU(), nn.Conv2d(16, dim, 2, stride=2))
        self.ego = nn.Linear(EGO_STEPS * len(EGO_FIELDS), dim)

    def forward(self, images: torch.Tensor, ego: torch.Tensor) -> torch.Tensor:
        pixels = images[:, 0].float() / 255.0
        return self.stem(pixels).mean((2, 3)) + self.ego(ego.flatten(1))


class Denoiser(nn.Module):
    """The network every step calls: (actions, time, context) -> velocity or predicted noise."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 + 2 * dim, 64), nn.GELU(), nn.Linear(64, 2))
        self.dim = dim

    def forward(self, actions: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # A sinusoidal embedding of the time; t is a 0-d tensor (a buffer element), so this traces as constants.
        freqs = torch.arange(self.dim // 2, dtype=torch.float32, device=actions.device)
        angle = t * torch.exp(-math.log(1000.0) * freqs / (self.dim // 2))
        emb = torch.cat([angle.sin(), angle.cos()]).expand(actions.shape[0], actions.shape[1], self.dim)
        ctx = context[:, None, :].expand(-1, actions.shape[1], -1)
        return self.net(torch.cat([actions, emb, ctx], -1))


class SamplingPolicy(nn.Module):
    """What both samplers share: the context, the scores, and actions -> a plausible trajectory."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int (fixed when the model is built), got {steps!r}")
        self.steps = steps  # a Python int: the loop in forward() is unrolled into `steps` copies
        self.context = Context()
        self.denoiser = Denoiser()
        self.score = nn.Linear(32, MODES)
        self.register_buffer("times_s", torch.arange(1, POINTS + 1, dtype=torch.float32) * DT, persistent=False)

    def trajectory(self, actions: torch.Tensor, ego: torch.Tensor) -> torch.Tensor:
        """Actions [B, M, 2] -> speed (4-6 m/s about the ego speed) and curvature (|k| < 0.02 1/m) per
        mode, integrated along the arc: x, y, yaw at t = dt .. horizon."""
        speed = (ego[:, -1, 3:4].clamp(0.0, 20.0) + torch.tanh(actions[..., 0])).clamp(min=1.0)  # [B, M]
        curvature = 0.02 * torch.tanh(actions[..., 1])
        arc = speed[..., None] * self.times_s  # [B, M, P] distance travelled
        yaw = curvature[..., None] * arc
        step = speed[..., None] * DT
        x = torch.cumsum(step * torch.cos(yaw), -1)
        y = torch.cumsum(step * torch.sin(yaw), -1)
        return torch.stack([x, y, yaw], -1)


class FlowMatchingPolicy(SamplingPolicy):
    """Flow matching: integrate the learned velocity from noise (t = 0) to actions (t = 1) in K Euler steps."""

    def __init__(self, steps: int = 4) -> None:
        super().__init__(steps)
        # The time grid, computed once: every step reads its time as a constant of the graph.
        self.register_buffer("t_grid", torch.linspace(0.0, 1.0, steps + 1), persistent=False)

    def io_spec(self) -> dict:
        return io_spec("flow-matching", self.steps)

    def forward(self, images: torch.Tensor, ego: torch.Tensor, noise: torch.Tensor):
        context = self.context(images, ego)
        x = noise
        for k in range(self.steps):  # K fixed at build time: unrolled
            dt = self.t_grid[k + 1] - self.t_grid[k]
            x = x + dt * self.denoiser(x, self.t_grid[k], context)
        return self.trajectory(x, ego), torch.softmax(self.score(context), -1)


class DdimPolicy(SamplingPolicy):
    """DDIM (deterministic, eta = 0): K of the training schedule's timesteps, from noisy to clean.

    What a diffusers scheduler computes in ``set_timesteps`` and looks up in ``step`` is computed here
    once: the K timesteps and, for each step, the cumulative alpha at it and at the next one.
    """

    def __init__(self, steps: int = 5, train_steps: int = 1000) -> None:
        super().__init__(steps)
        betas = torch.linspace(1e-4, 0.02, train_steps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, 0)
        timesteps = torch.arange(steps - 1, -1, -1) * (train_steps // steps)  # e.g. 800, 600, ..., 0
        alpha = alphas_cumprod[timesteps]
        alpha_next = torch.cat([alphas_cumprod[timesteps[1:]], torch.ones(1, dtype=torch.float64)])
        self.register_buffer("timesteps", timesteps.float(), persistent=False)
        self.register_buffer("alpha", alpha.float(), persistent=False)
        self.register_buffer("alpha_next", alpha_next.float(), persistent=False)
        self.train_steps = train_steps

    def io_spec(self) -> dict:
        return io_spec("ddim", self.steps)

    def forward(self, images: torch.Tensor, ego: torch.Tensor, noise: torch.Tensor):
        context = self.context(images, ego)
        x = noise
        for k in range(self.steps):  # K fixed at build time: unrolled; no scheduler object, no step index
            a, a_next = self.alpha[k], self.alpha_next[k]
            eps = self.denoiser(x, self.timesteps[k] / self.train_steps, context)
            x0 = (x - (1.0 - a).sqrt() * eps) / a.sqrt()
            x = a_next.sqrt() * x0 + (1.0 - a_next).sqrt() * eps
        return self.trajectory(x, ego), torch.softmax(self.score(context), -1)


def flow_matching() -> FlowMatchingPolicy:
    """``--factory samplers:flow_matching``: the flow-matching policy with K = 4, seeded weights."""
    torch.manual_seed(0)
    return FlowMatchingPolicy(steps=4).eval()


def ddim() -> DdimPolicy:
    """``--factory samplers:ddim``: the DDIM policy with K = 5, seeded weights."""
    torch.manual_seed(0)
    return DdimPolicy(steps=5).eval()


def main(out: str = ".") -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, build in (("flow", flow_matching), ("ddim", ddim)):
        torch.save(build().state_dict(), folder / f"{name}.pt")
        print(f"wrote {folder / f'{name}.pt'}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
