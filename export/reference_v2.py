"""Reference model 2 (PyTorch): the field's VLA shape, split into stages that run at their own rates.

Where model 1 (``reference.py``) is one graph with recurrent memory, model 2 is three submodules a
runtime can schedule separately: the vision encoder and the context model (the "VLM" half) run when
frames arrive, possibly asynchronously, and the flow-matching action expert runs ``flow_steps`` times
per decision, one Euler step per call, against the newest context. There is no recurrent memory; the
context model doubles as a world model by predicting the next tick's context. Weights are seeded and
deterministic (trained weights come later); the defaults (≈8 M parameters) run a decision in tens of
milliseconds on one CPU core with ONNX Runtime.

Data flow, one decision::

    images u8 [B,C,3,H,W] ─ vision: patch embed (normalisation folded in) ─ ViT per camera
        ─ 2x2 average pool of the patch grid ─► vision_tokens [B, C*P', Dv]
    vision_tokens + text_ids/text_mask [B,16] + nav_cmd [B] + ego [B,16,6] + N learned queries
        ─ context: transformer ─► context [B,N,D] ("latent language")
        ─ world head ─► next_context [B,N,D] (predicted context of the next tick)
    sample := noise [B,M,64,2]; for i in 0..K-1:
        expert(sample, t=i/K, context, ego) ─► next_sample = sample + v/K, controls, score
    controls [B,M,64,2] = (acceleration m/s², curvature 1/m) every dt = 0.1 s, per mode; score [B,M]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from vla.runtime.errors import VlaError

from .reference import (
    _EGO_SCALE,
    COMMANDS,
    EGO_FIELDS,
    TOKENS,
    Block,
    PatchEmbed,
    camera_input,
    ego_input,
    language_inputs,
    vocabulary,
)

__all__ = ["ActionExpert", "ContextModel", "ReferenceConfig2", "ReferenceVLA2", "VisionEncoder",
           "build_reference_v2"]

# Controls per unit of the flow's sample space: (accel m/s², curvature 1/m). The flow's prior is a
# unit normal, so untrained outputs spread like plausible driving (σ ≈ 1 m/s², σ ≈ 0.02 1/m, i.e. a
# 50 m radius): even a 4.5σ draw plus the largest prior stays inside the runtime's default limits
# (8 m/s², 0.3 1/m). 1 m/s² per unit (not more) leaves that margin with the acceleration prior added.
_CONTROL_SCALE = (1.0, 0.02)
# Priors from the newest ego sample, so a zero sample means "keep doing what the car does now":
# its acceleration, bounded and decaying (drivers do not hold an acceleration for 6 s), and the
# curvature it is driving (yaw_rate / speed, speed floored at 1 m/s so standstill noise stays finite),
# bounded by a tight road vehicle's turning circle (5 m radius).
_ACCEL_PRIOR_MAX = 4.0  # m/s²
_ACCEL_PRIOR_DECAY_S = 2.0  # time constant of the acceleration prior
_CURVATURE_PRIOR_MAX = 0.2  # 1/m
_MIN_SPEED = 1.0  # m/s
# Each submodule draws its weights from its own seed stream: built alone it equals the composed
# model's copy, and resizing one stage leaves the other stages' weights unchanged.
_SEED_OFFSETS = {"vision": 0, "context": 1, "expert": 2}


@dataclass(frozen=True)
class ReferenceConfig2:
    """Sizes of reference model 2. Defaults give ≈8 M parameters."""

    cameras: tuple[str, ...] = ("front", "left", "right")
    image_height: int = 128
    image_width: int = 256
    patch: int = 16
    vit_dim: int = 192
    vit_depth: int = 4
    vit_heads: int = 3
    vision_pool: int = 2  # the patch grid is average-pooled by this factor per side (P' = P / pool²)
    dim: int = 256  # context width D
    heads: int = 4
    context_tokens: int = 32  # N
    context_depth: int = 4
    world_depth: int = 1
    ego_steps: int = 16
    ego_group: int = 4  # ego history steps per context-model token
    text_len: int = 16
    expert_dim: int = 128
    expert_heads: int = 4
    expert_depth: int = 3
    modes: int = 3  # M
    waypoints: int = 64
    waypoint_chunk: int = 8  # waypoints per action-expert token
    dt: float = 0.1
    flow_steps: int = 10  # K: Euler steps per decision, one expert call each
    seed: int = 0


def _check(c: ReferenceConfig2) -> None:
    """Refuse sizes the stages cannot reshape, before any weight is drawn (overrides come from users)."""
    grid = (c.image_height // max(c.patch, 1), c.image_width // max(c.patch, 1))
    problems = [
        (c.patch > 0 and c.image_height % c.patch == 0 and c.image_width % c.patch == 0,
         f"image size {c.image_height}x{c.image_width} is not a multiple of patch {c.patch}"),
        (c.vision_pool > 0 and grid[0] % c.vision_pool == 0 and grid[1] % c.vision_pool == 0,
         f"patch grid {grid[0]}x{grid[1]} does not divide by vision_pool {c.vision_pool}"),
        (c.waypoint_chunk > 0 and c.waypoints % c.waypoint_chunk == 0,
         f"waypoints {c.waypoints} does not divide by waypoint_chunk {c.waypoint_chunk}"),
        (c.ego_group > 0 and c.ego_steps % c.ego_group == 0,
         f"ego_steps {c.ego_steps} does not divide by ego_group {c.ego_group}"),
        (c.vit_heads > 0 and c.vit_dim % c.vit_heads == 0, f"vit_dim {c.vit_dim} does not divide by vit_heads"),
        (c.heads > 0 and c.dim % c.heads == 0, f"dim {c.dim} does not divide by heads {c.heads}"),
        (c.expert_heads > 0 and c.expert_dim % c.expert_heads == 0,
         f"expert_dim {c.expert_dim} does not divide by expert_heads {c.expert_heads}"),
        (c.dim % 2 == 0 and c.expert_dim % 2 == 0, "dim and expert_dim must be even (sinusoidal embeddings)"),
        (c.flow_steps >= 1, f"flow_steps must be at least 1, not {c.flow_steps}"),
        (len(c.cameras) >= 1 and c.modes >= 1 and c.context_tokens >= 1, "need at least one camera, mode and "
         "context token"),
    ]
    for ok, message in problems:
        if not ok:
            raise VlaError(f"reference model 2: {message}; pick sizes that divide")


@contextlib.contextmanager
def _seeded(c: ReferenceConfig2, stage: str) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed * len(_SEED_OFFSETS) + _SEED_OFFSETS[stage])
        yield


def _newest_ego(ego: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return ego[:, -1] / scale  # [B, 6], newest sample last (manifest order: oldest first)


class VisionEncoder(nn.Module):
    """A ViT shared by every camera (told apart by a camera embedding), then an average pool of each
    camera's patch grid: pooling keeps the context model's sequence short, which is what keeps the
    whole VLM half cheap; the pixels' fine detail has already been mixed into the pooled tokens."""

    output_names = ("vision_tokens",)

    def __init__(self, config: ReferenceConfig2) -> None:
        super().__init__()
        c = self.config = config
        _check(c)
        self.grid = (c.image_height // c.patch, c.image_width // c.patch)
        with _seeded(c, "vision"):
            self.patch = PatchEmbed(c.patch, c.vit_dim)
            self.pos = nn.Parameter(0.02 * torch.randn(1, self.grid[0] * self.grid[1], c.vit_dim))
            self.cam_embed = nn.Parameter(0.02 * torch.randn(len(c.cameras), 1, c.vit_dim))
            self.blocks = nn.ModuleList(Block(c.vit_dim, c.vit_heads) for _ in range(c.vit_depth))
            self.norm = nn.LayerNorm(c.vit_dim)
        self.eval()

    @property
    def tokens_per_camera(self) -> int:
        return (self.grid[0] // self.config.vision_pool) * (self.grid[1] // self.config.vision_pool)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images uint8 [B, C, 3, H, W] -> vision_tokens float32 [B, C*P', Dv]."""
        c = self.config
        b, n_cam = images.shape[:2]
        x = self.patch(images.flatten(0, 1)) + self.pos  # [B*C, P, Dv]
        x = (x.view(b, n_cam, -1, c.vit_dim) + self.cam_embed).flatten(0, 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        (gh, gw), p = self.grid, c.vision_pool
        x = x.view(b * n_cam, gh // p, p, gw // p, p, c.vit_dim).mean(dim=(2, 4))
        return x.reshape(b, n_cam * self.tokens_per_camera, c.vit_dim)


class ContextModel(nn.Module):
    """The VLM half: one transformer over vision tokens, the "L" tokens (instruction words and the
    route command), ego history and N learned queries; the queries' outputs are the context (the
    model's "latent language" the action expert reads). A world-model head predicts the next tick's
    context from it: a training target that needs no labels, and an aux output the runtime records."""

    output_names = ("context", "next_context")

    def __init__(self, config: ReferenceConfig2) -> None:
        super().__init__()
        c = self.config = config
        _check(c)
        d = c.dim
        with _seeded(c, "context"):
            self.vision_proj = nn.Linear(c.vit_dim, d)
            self.type_embed = nn.Parameter(0.02 * torch.randn(5, 1, d))  # vision, text, command, ego, query
            self.text_embed = nn.Embedding(len(TOKENS), d)
            self.text_pos = nn.Parameter(0.02 * torch.randn(1, c.text_len, d))
            self.nav_embed = nn.Embedding(len(COMMANDS), d)
            self.ego_proj = nn.Linear(c.ego_group * len(EGO_FIELDS), d)
            self.ego_pos = nn.Parameter(0.02 * torch.randn(1, c.ego_steps // c.ego_group, d))
            self.queries = nn.Parameter(0.02 * torch.randn(1, c.context_tokens, d))
            self.blocks = nn.ModuleList(Block(d, c.heads) for _ in range(c.context_depth))
            self.norm = nn.LayerNorm(d)
            self.world = nn.ModuleList(Block(d, c.heads) for _ in range(c.world_depth))
            self.world_out = nn.Linear(d, d)
        self.register_buffer("ego_scale", torch.tensor(_EGO_SCALE), persistent=False)
        self.eval()

    def forward(
        self,
        vision_tokens: torch.Tensor,
        ego: torch.Tensor,
        nav_cmd: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> context [B, N, D], next_context [B, N, D]."""
        c = self.config
        b = vision_tokens.shape[0]
        te = self.type_embed
        groups = c.ego_steps // c.ego_group
        x = torch.cat([
            self.vision_proj(vision_tokens) + te[0],
            self.text_embed(text_ids) + self.text_pos + te[1],
            self.nav_embed(nav_cmd)[:, None] + te[2],
            self.ego_proj((ego / self.ego_scale).reshape(b, groups, -1)) + self.ego_pos + te[3],
            self.queries.expand(b, -1, -1) + te[4],
        ], dim=1)
        # Only the instruction's padding is masked; every other token is always present.
        one = torch.ones_like(text_mask[:, :1])
        mask = torch.cat([one.expand(b, vision_tokens.shape[1]), text_mask,
                          one.expand(b, 1 + groups + c.context_tokens)], dim=1)
        for blk in self.blocks:
            x = blk(x, key_mask=mask)
        context = self.norm(x[:, -c.context_tokens:])
        w = context
        for blk in self.world:
            w = blk(w)
        return context, context + self.world_out(w)


class ActionExpert(nn.Module):
    """Flow-matching action expert: one Euler step of dx/dt = v(x, t | context, ego) per call.

    Tokens are chunks of ``waypoint_chunk`` waypoints per mode; they attend to each other (all modes
    together, so modes can spread out) and cross-attend to the context. One step per call lets the
    runtime run the expert against the newest context at its own rate, and keeps t a graph input.
    """

    output_names = ("next_sample", "controls", "score")

    def __init__(self, config: ReferenceConfig2) -> None:
        super().__init__()
        c = self.config = config
        _check(c)
        e = c.expert_dim
        chunks = c.waypoints // c.waypoint_chunk
        with _seeded(c, "expert"):
            self.sample_in = nn.Linear(2 * c.waypoint_chunk, e)
            self.chunk_pos = nn.Parameter(0.02 * torch.randn(1, 1, chunks, e))
            self.mode_embed = nn.Parameter(0.02 * torch.randn(1, c.modes, 1, e))
            self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
            self.ego_in = nn.Linear(len(EGO_FIELDS), e)
            self.blocks = nn.ModuleList(Block(e, c.expert_heads, cross_dim=c.dim) for _ in range(c.expert_depth))
            self.norm = nn.LayerNorm(e)
            self.velocity_out = nn.Linear(e, 2 * c.waypoint_chunk)
            self.score_head = nn.Sequential(nn.Linear(e, e), nn.GELU(), nn.Linear(e, 1))
            with torch.no_grad():  # untrained velocities small: samples stay near the flow's unit-normal prior
                self.velocity_out.weight.mul_(0.1)
        half = e // 2
        self.register_buffer("freqs", 1000.0 * torch.exp(-math.log(1000.0) * torch.arange(half) / half),
                             persistent=False)
        self.register_buffer("ego_scale", torch.tensor(_EGO_SCALE), persistent=False)
        self.register_buffer("control_scale", torch.tensor(_CONTROL_SCALE), persistent=False)
        steps = torch.arange(1, c.waypoints + 1, dtype=torch.float32) * c.dt
        self.register_buffer("accel_decay", torch.exp(-steps / _ACCEL_PRIOR_DECAY_S), persistent=False)
        self.eval()

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """Sinusoidal embedding of the flow time, t float32 [B] (a tensor: it is a graph input)."""
        ang = t[:, None] * self.freqs
        return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)

    def prior(self, ego: torch.Tensor) -> torch.Tensor:
        """[B, 1, T, 2]: the newest ego acceleration (bounded, decaying) and curvature (bounded)."""
        newest = ego[:, -1]
        accel = newest[:, 4:5].clamp(-_ACCEL_PRIOR_MAX, _ACCEL_PRIOR_MAX) * self.accel_decay  # [B, T]
        curvature = (newest[:, 5:6] / newest[:, 3:4].clamp(min=_MIN_SPEED)).clamp(
            -_CURVATURE_PRIOR_MAX, _CURVATURE_PRIOR_MAX)
        return torch.stack([accel, curvature.expand_as(accel)], dim=-1)[:, None]

    def forward(
        self,
        sample: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        ego: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> next_sample [B,M,T,2] (unit space), controls [B,M,T,2] (m/s², 1/m), score [B,M]."""
        c = self.config
        b, m = sample.shape[:2]
        chunks = c.waypoints // c.waypoint_chunk
        cond = self.time_mlp(self.time_embedding(t)) + self.ego_in(_newest_ego(ego, self.ego_scale))  # [B, E]
        tok = self.sample_in(sample.reshape(b, m, chunks, -1)) + self.chunk_pos + self.mode_embed
        h = (tok + cond[:, None, None]).flatten(1, 2)
        for blk in self.blocks:
            h = blk(h, ctx_kv=blk.cross.keys_values(context))
        h = self.norm(h)
        velocity = self.velocity_out(h).view(b, m, c.waypoints, 2)
        next_sample = sample + velocity / c.flow_steps
        controls = self.prior(ego) + next_sample * self.control_scale
        score = torch.softmax(self.score_head(h.view(b, m, chunks, -1).mean(2)).squeeze(-1), dim=-1)
        return next_sample, controls, score


class ReferenceVLA2(nn.Module):
    """Reference model 2: ``vision``, ``context`` and ``expert`` composed into one decision.

    ``forward`` takes the inputs in manifest order (see ``io_spec``) and is exactly what a runtime
    gets by running the stages declared in ``stages_spec`` by hand.
    """

    output_names = ("controls", "score", "next_context")

    def __init__(self, config: ReferenceConfig2 | None = None) -> None:
        super().__init__()
        c = self.config = config or ReferenceConfig2()
        _check(c)
        self.vision = VisionEncoder(c)
        self.context = ContextModel(c)
        self.expert = ActionExpert(c)
        self.eval()

    def forward(
        self,
        images: torch.Tensor,
        ego: torch.Tensor,
        nav_cmd: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        noise: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = self.config.flow_steps
        context, next_context = self.context(self.vision(images), ego, nav_cmd, text_ids, text_mask)
        sample = noise
        controls = score = None
        for i in range(k):  # flow from noise (t=0) towards a sample (t=1), step i starting at t = i/K
            t = torch.full((noise.shape[0],), i / k, dtype=noise.dtype, device=noise.device)
            sample, controls, score = self.expert(sample, t, context, ego)
        return controls, score, next_context

    # ---- contract -----------------------------------------------------------------------------
    def io_spec(self, batch: int = 1) -> dict:
        """The model-facing part of the manifest (inputs/outputs/vocabulary), in forward() order."""
        c = self.config
        traj = [batch, c.modes, c.waypoints, 2]
        return {
            "schema_version": 1,
            "model": {
                "name": "vla-reference-2",
                "source": "vla.export.reference_v2",
                "parameters": sum(p.numel() for p in self.parameters()),
                "config": asdict(c),
            },
            "inputs": [
                camera_input(c, batch),
                ego_input(c, batch),
                *language_inputs(c, batch),
                {"name": "noise", "dtype": "float32", "role": "noise", "shape": traj,
                 "noise": {"distribution": "normal", "std": 1.0}},
            ],
            "outputs": [
                {"name": "controls", "dtype": "float32", "role": "trajectory", "shape": traj,
                 "trajectory": {"dt": c.dt, "horizon_s": round(c.dt * c.waypoints, 9), "frame": "ego",
                                "fields": ["accel", "curvature"]}},
                {"name": "score", "dtype": "float32", "role": "score", "shape": traj[:2],
                 "score": {"kind": "probability"}},
                {"name": "next_context", "dtype": "float32", "role": "aux",
                 "shape": [batch, c.context_tokens, c.dim], "aux": {"predicts": "context"},
                 "description": "world model: predicted context tokens of the next tick"},
            ],
            "vocabulary": vocabulary(),
        }

    def stages_spec(self) -> dict:
        """How the exporter splits the model: which submodule each stage runs, and how often.

        The context may lag the cameras (``async``, at most ``max_age_ms`` old when used); the action
        stage is the expert called ``repeat`` times, its ``sample`` output fed back as its input
        (starting from the ``noise`` input) and ``t`` set to i/repeat on call i.
        """
        return {
            "vision": "vision",
            "context": {"module": "context", "rate": "async", "max_age_ms": 300},
            "action": {"module": "expert", "repeat": self.config.flow_steps,
                       "sample": {"input": "sample", "output": "next_sample", "init": "noise"}, "time": "t"},
        }


def build_reference_v2(**overrides) -> ReferenceVLA2:
    """Reference model 2 with ``ReferenceConfig2`` fields overridden (e.g. ``modes=5``)."""
    try:
        config = ReferenceConfig2(**overrides)
    except TypeError as exc:
        raise VlaError(f"reference model 2: {exc}; see ReferenceConfig2 for the fields") from None
    return ReferenceVLA2(config)
