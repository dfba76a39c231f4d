"""Reference driving VLA (PyTorch): cameras + route/language + ego + memory -> trajectories.

The shape of a current driving VLA, small enough for a CPU (≈13 M parameters), with seeded
deterministic weights (trained weights come later). Language is a *parallel* input (V+L→A), and
the model doubles as a world model (it predicts the next tick's scene tokens).

Data flow, one tick::

    images u8 [B,C,3,H,W] ─ patch embed (normalisation folded into the conv) ─ ViT per camera
        ─ resampler (64 learned queries) ─► scene tokens [B,64,D] ──────────────┐
    memory [B,S,64,D] + memory_valid [B,S] ─ pooled per slot ──────────────────┤
    text_ids/text_mask [B,16] ─ embedding ──────────────────────────────────────┼─ fusion transformer ─► context
    ego [B,16,6] ─ grouped steps ─ linear ─────────────────────────────────────┤
    nav_cmd [B] ─ embedding ───────────────────────────────────────────────────┘
    context ─ world head ─► next_latent [B,64,D]
    noise [B,K,64,3] ─ N Euler steps of the flow-matching action expert (unrolled in the graph)
        ─► trajectory [B,K,64,3] = constant-turn-rate prior from ego + residual accelerations
           integrated twice (yaw rate once); score [B,K]
    memory shifted by one slot, scene tokens appended ─► new_memory, new_memory_valid (state)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: The "L" tokens. Small on purpose: route commands and short instructions.
TOKENS = (
    "<pad>", "go", "straight", "turn", "left", "right", "keep", "lane", "follow", "the", "road",
    "change", "to", "stop", "pull", "over", "u-turn", "make", "a", "at", "next", "intersection",
    "slow", "down", "take", "exit", "merge", "park", "yield", "continue", "ahead", "and",
)
#: nav_cmd values and the phrases that select them (longest phrase found in the command wins).
COMMANDS = (
    ("follow", ("follow the road", "follow", "continue", "keep lane", "continue ahead")),
    ("straight", ("go straight", "straight", "straight ahead")),
    ("left", ("turn left", "left")),
    ("right", ("turn right", "right")),
    ("lane_change_left", ("change lane to the left", "change to the left lane", "merge left")),
    ("lane_change_right", ("change lane to the right", "change to the right lane", "merge right")),
    ("stop", ("stop", "pull over", "park")),
    ("u_turn", ("u-turn", "make a u-turn")),
)

IMAGE_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGE_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
EGO_FIELDS = ("x", "y", "yaw", "v", "a", "yaw_rate")
# Typical magnitudes of the ego fields over 1.5 s of history, to bring them near unit scale.
_EGO_SCALE = (20.0, 2.0, 0.3, 15.0, 2.0, 0.3)
# The action expert's unit output, per waypoint: an acceleration-like step for x and y (m per
# step², integrated twice, so even untrained weights give physically smooth paths: ≈0.4 m/s² per
# unit) and a yaw-rate step (rad per step, integrated once).
_RESIDUAL_ACCEL = (0.004, 0.004, 0.0)
_RESIDUAL_YAW_RATE = (0.0, 0.0, 0.002)


@dataclass(frozen=True)
class ReferenceConfig:
    """Sizes of the reference model. Defaults give ≈13 M parameters."""

    cameras: tuple[str, ...] = ("front", "left", "right")
    image_height: int = 128
    image_width: int = 256
    patch: int = 16
    vit_dim: int = 192
    vit_depth: int = 4
    vit_heads: int = 3
    dim: int = 256
    heads: int = 4
    scene_tokens: int = 64
    memory_slots: int = 4
    memory_pool: int = 4  # memory tokens are average-pooled by this factor before fusion
    resampler_depth: int = 2
    fusion_depth: int = 4
    world_depth: int = 2
    action_depth: int = 3
    ego_steps: int = 16
    ego_group: int = 4  # ego history steps per fusion token
    text_len: int = 16
    modes: int = 3  # K
    waypoints: int = 64
    dt: float = 0.1
    euler_steps: int = 4  # N, fixed at export
    waypoint_chunk: int = 4  # waypoints per action-expert token
    seed: int = 0


# ---- the contract pieces both reference models share (io_spec) ------------------------------------
def camera_input(c, batch: int) -> dict:
    """The ``images`` input: raw uint8 RGB from every camera, normalisation folded into the graph."""
    return {"name": "images", "dtype": "uint8", "role": "camera",
            "shape": [batch, len(c.cameras), 3, c.image_height, c.image_width],
            "camera": {"names": list(c.cameras), "layout": "NCHW", "color": "RGB",
                       "height": c.image_height, "width": c.image_width,
                       "normalization": {"mean": list(IMAGE_MEAN), "std": list(IMAGE_STD), "in_graph": True}}}


def ego_input(c, batch: int) -> dict:
    return {"name": "ego", "dtype": "float32", "role": "ego", "shape": [batch, c.ego_steps, len(EGO_FIELDS)],
            "ego": {"fields": list(EGO_FIELDS), "rate_hz": 1.0 / c.dt, "frame": "ego"}}


def language_inputs(c, batch: int) -> list[dict]:
    """The route command and the L tokens (word vocabulary ids and their mask)."""
    return [{"name": "nav_cmd", "dtype": "int64", "role": "command", "shape": [batch]},
            {"name": "text_ids", "dtype": "int64", "role": "text", "shape": [batch, c.text_len],
             "text": {"kind": "ids"}},
            {"name": "text_mask", "dtype": "bool", "role": "text", "shape": [batch, c.text_len],
             "text": {"kind": "mask"}}]


def vocabulary() -> dict:
    return {"tokens": list(TOKENS), "pad": "<pad>",
            "commands": [{"id": i, "name": n, "phrases": list(p)} for i, (n, p) in enumerate(COMMANDS)]}


class Attention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention`` (exports to plain ONNX ops)."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def keys_values(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = ctx.shape
        k, v = self.kv(ctx).view(b, n, 2, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor],
        key_mask: torch.Tensor | None = None,  # bool [B, Lk], True = attend
    ) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, dim: int, heads: int, cross_dim: int | None = None, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.cross = Attention(dim, heads, cross_dim) if cross_dim else None
        self.norm_c = nn.LayerNorm(dim) if cross_dim else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        ctx_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        ctx_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, self.attn.keys_values(h), key_mask)
        if self.cross is not None and ctx_kv is not None:
            x = x + self.cross(self.norm_c(x), ctx_kv, ctx_mask)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Conv patch embedding that takes raw uint8 pixels: (x - mean) / std is folded into the conv.

    Folding makes the graph's first op a plain Cast + Conv, so the camera pre-processing never has
    to normalise (one less pass over the image) and fp16/int8 exports see the raw pixel range.
    """

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
        with torch.no_grad():  # w·(x-m)/s + b = (w/s)·x + (b - Σ w·m/s)
            w = self.proj.weight.clone()
            self.proj.weight.copy_(w / std)
            self.proj.bias.sub_((w * (mean / std)).sum(dim=(1, 2, 3)))

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self.proj(images_u8.float()).flatten(2).transpose(1, 2)


def _time_embedding(t: float, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of a flow time; t is a Python constant so this folds at export."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32) / half)
    ang = t * 1000.0 * freqs
    return torch.cat([torch.sin(ang), torch.cos(ang)])


class ReferenceVLA(nn.Module):
    """The reference model. ``forward`` takes the inputs in manifest order (see ``io_spec``)."""

    def __init__(self, config: ReferenceConfig | None = None) -> None:
        super().__init__()
        c = self.config = config or ReferenceConfig()
        if c.image_height % c.patch or c.image_width % c.patch:
            raise ValueError(f"image size {c.image_height}x{c.image_width} is not a multiple of patch {c.patch}")
        if c.waypoints % c.waypoint_chunk or c.scene_tokens % c.memory_pool or c.ego_steps % c.ego_group:
            raise ValueError("waypoints, scene_tokens and ego_steps must divide by their chunk sizes")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self._build(c)
        self.eval()

    def _build(self, c: ReferenceConfig) -> None:
        n_patches = (c.image_height // c.patch) * (c.image_width // c.patch)
        n_cams = len(c.cameras)
        d = c.dim
        # Vision: one ViT applied to every camera, told apart by a camera embedding.
        self.patch = PatchEmbed(c.patch, c.vit_dim)
        self.vit_pos = nn.Parameter(0.02 * torch.randn(1, n_patches, c.vit_dim))
        self.cam_embed = nn.Parameter(0.02 * torch.randn(n_cams, 1, c.vit_dim))
        self.vit = nn.ModuleList(Block(c.vit_dim, c.vit_heads) for _ in range(c.vit_depth))
        self.vit_norm = nn.LayerNorm(c.vit_dim)
        # Resampler: learned queries cross-attend to every camera token.
        self.queries = nn.Parameter(0.02 * torch.randn(1, c.scene_tokens, d))
        self.resampler = nn.ModuleList(Block(d, c.heads, cross_dim=c.vit_dim) for _ in range(c.resampler_depth))
        self.scene_norm = nn.LayerNorm(d)
        # Fusion over scene + memory + language + ego + route command.
        self.type_embed = nn.Parameter(0.02 * torch.randn(5, 1, d))
        self.slot_embed = nn.Parameter(0.02 * torch.randn(1, c.memory_slots, 1, d))
        self.text_embed = nn.Embedding(len(TOKENS), d)
        self.text_pos = nn.Parameter(0.02 * torch.randn(1, c.text_len, d))
        self.ego_proj = nn.Linear(c.ego_group * len(EGO_FIELDS), d)
        self.ego_pos = nn.Parameter(0.02 * torch.randn(1, c.ego_steps // c.ego_group, d))
        self.register_buffer("ego_scale", torch.tensor(_EGO_SCALE), persistent=False)
        self.nav_embed = nn.Embedding(len(COMMANDS), d)
        self.fusion = nn.ModuleList(Block(d, c.heads) for _ in range(c.fusion_depth))
        self.fusion_norm = nn.LayerNorm(d)
        # World model: the next tick's scene tokens.
        self.world = nn.ModuleList(Block(d, c.heads) for _ in range(c.world_depth))
        self.world_out = nn.Linear(d, d)
        # Flow-matching action expert over chunks of waypoints, cross-attending to the context.
        chunk = c.waypoint_chunk * 3
        self.act_in = nn.Linear(chunk, d)
        self.act_pos = nn.Parameter(0.02 * torch.randn(1, 1, c.waypoints // c.waypoint_chunk, d))
        self.mode_embed = nn.Parameter(0.02 * torch.randn(1, c.modes, 1, d))
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.action = nn.ModuleList(Block(d, c.heads, cross_dim=d) for _ in range(c.action_depth))
        self.act_norm = nn.LayerNorm(d)
        self.act_out = nn.Linear(d, chunk)
        self.score_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        self.register_buffer("residual_accel", torch.tensor(_RESIDUAL_ACCEL), persistent=False)
        self.register_buffer("residual_yaw_rate", torch.tensor(_RESIDUAL_YAW_RATE), persistent=False)

    # ---- stages -------------------------------------------------------------------------------
    def encode_cameras(self, images: torch.Tensor) -> torch.Tensor:
        b, n_cam = images.shape[:2]
        x = self.patch(images.flatten(0, 1)) + self.vit_pos  # [B*C, P, Dv]
        x = x.view(b, n_cam, -1, x.shape[-1]) + self.cam_embed
        x = x.flatten(0, 1)
        for blk in self.vit:
            x = blk(x)
        return self.vit_norm(x).view(b, -1, x.shape[-1])  # [B, C*P, Dv]

    def resample(self, cam_tokens: torch.Tensor) -> torch.Tensor:
        x = self.queries.expand(cam_tokens.shape[0], -1, -1)
        for blk in self.resampler:
            x = blk(x, ctx_kv=blk.cross.keys_values(cam_tokens))
        return self.scene_norm(x)

    def fuse(self, scene, memory, memory_valid, ego, nav_cmd, text_ids, text_mask):
        c = self.config
        b = scene.shape[0]
        pooled = memory.view(b, c.memory_slots, c.scene_tokens // c.memory_pool, c.memory_pool, -1).mean(3)
        mem = (pooled + self.slot_embed).flatten(1, 2)
        mem_mask = memory_valid.repeat_interleave(c.scene_tokens // c.memory_pool, dim=1)
        text = self.text_embed(text_ids) + self.text_pos
        ego_tok = self.ego_proj((ego / self.ego_scale).reshape(b, c.ego_steps // c.ego_group, -1)) + self.ego_pos
        nav = self.nav_embed(nav_cmd)[:, None]
        te = self.type_embed
        x = torch.cat([scene + te[0], mem + te[1], text + te[2], ego_tok + te[3], nav + te[4]], dim=1)
        ones_scene = torch.ones_like(memory_valid[:, :1]).expand(b, scene.shape[1])
        ones_tail = torch.ones_like(memory_valid[:, :1]).expand(b, ego_tok.shape[1] + 1)
        mask = torch.cat([ones_scene, mem_mask, text_mask, ones_tail], dim=1)
        for blk in self.fusion:
            x = blk(x, key_mask=mask)
        return self.fusion_norm(x), mask

    def velocity(self, x, t: float, ctx_kvs, ctx_mask):
        c = self.config
        b, k = x.shape[:2]
        tok = self.act_in(x.reshape(b, k, c.waypoints // c.waypoint_chunk, -1)) + self.act_pos + self.mode_embed
        tok = tok + self.time_mlp(_time_embedding(t, c.dim).to(x.dtype))
        h = tok.flatten(1, 2)
        for blk, kv in zip(self.action, ctx_kvs, strict=True):
            h = blk(h, ctx_kv=kv, ctx_mask=ctx_mask)
        h = self.act_norm(h)
        return self.act_out(h).view(b, k, c.waypoints, 3), h

    def prior(self, ego: torch.Tensor) -> torch.Tensor:
        """Constant speed and turn rate from the newest ego sample: [B, 1, T, 3] (x, y, yaw)."""
        c = self.config
        v = ego[:, -1, 3:4]
        w = ego[:, -1, 5:6]
        steps = torch.arange(1, c.waypoints + 1, dtype=ego.dtype, device=ego.device)
        yaw = w * steps * c.dt  # [B, T]
        mid = yaw - 0.5 * w * c.dt
        x = torch.cumsum(v * c.dt * torch.cos(mid), dim=1)
        y = torch.cumsum(v * c.dt * torch.sin(mid), dim=1)
        return torch.stack([x, y, yaw], dim=-1)[:, None]

    def forward(self, images, memory, memory_valid, ego, nav_cmd, text_ids, text_mask, noise):
        c = self.config
        scene = self.resample(self.encode_cameras(images))
        ctx, ctx_mask = self.fuse(scene, memory, memory_valid, ego, nav_cmd, text_ids, text_mask)
        # World model head on the fused scene tokens.
        w = ctx[:, : c.scene_tokens]
        for blk in self.world:
            w = blk(w)
        next_latent = scene + self.world_out(w)
        # Flow matching: integrate dx/dt = v(x, t) from noise (t=0) to a sample (t=1), N Euler steps.
        kvs = [blk.cross.keys_values(ctx) for blk in self.action]
        x = noise
        h = None
        for i in range(c.euler_steps):
            vel, h = self.velocity(x, i / c.euler_steps, kvs, ctx_mask)
            x = x + vel / c.euler_steps
        residual = torch.cumsum(torch.cumsum(x * self.residual_accel, dim=2), dim=2)
        trajectory = self.prior(ego) + residual + torch.cumsum(x * self.residual_yaw_rate, dim=2)
        mode_feat = h.view(x.shape[0], c.modes, -1, c.dim).mean(2)
        score = torch.softmax(self.score_head(mode_feat).squeeze(-1), dim=-1)
        new_memory = torch.cat([memory[:, 1:], scene[:, None]], dim=1)
        new_valid = torch.cat([memory_valid[:, 1:], torch.ones_like(memory_valid[:, :1])], dim=1)
        return trajectory, score, next_latent, new_memory, new_valid

    # ---- contract -----------------------------------------------------------------------------
    def io_spec(self, batch: int = 1) -> dict:
        """The model-facing part of the manifest (inputs/outputs/vocabulary), in forward() order."""
        c = self.config
        mem = [batch, c.memory_slots, c.scene_tokens, c.dim]
        traj = [batch, c.modes, c.waypoints, 3]
        return {
            "schema_version": 1,
            "model": {
                "name": "vla-reference",
                "source": "vla.export.reference",
                "parameters": sum(p.numel() for p in self.parameters()),
                "config": asdict(c),
            },
            "inputs": [
                camera_input(c, batch),
                {"name": "memory", "dtype": "float32", "role": "state", "shape": mem,
                 "state": {"from_output": "new_memory", "initial": 0.0},
                 "description": "scene tokens of earlier ticks, oldest slot first"},
                {"name": "memory_valid", "dtype": "bool", "role": "state", "shape": mem[:2],
                 "state": {"from_output": "new_memory_valid", "initial": False}},
                ego_input(c, batch),
                *language_inputs(c, batch),
                {"name": "noise", "dtype": "float32", "role": "noise", "shape": traj,
                 "noise": {"distribution": "normal", "std": 1.0}},
            ],
            "outputs": [
                {"name": "trajectory", "dtype": "float32", "role": "trajectory", "shape": traj,
                 "trajectory": {"dt": c.dt, "horizon_s": round(c.dt * c.waypoints, 9), "frame": "ego",
                                "fields": ["x", "y", "yaw"]}},
                {"name": "score", "dtype": "float32", "role": "score", "shape": traj[:2],
                 "score": {"kind": "probability"}},
                {"name": "next_latent", "dtype": "float32", "role": "aux", "shape": [batch, c.scene_tokens, c.dim],
                 "description": "world model: predicted scene tokens of the next tick"},
                {"name": "new_memory", "dtype": "float32", "role": "state", "shape": mem,
                 "state": {"to_input": "memory"}},
                {"name": "new_memory_valid", "dtype": "bool", "role": "state", "shape": mem[:2],
                 "state": {"to_input": "memory_valid"}},
            ],
            "vocabulary": vocabulary(),
        }


def build_reference(**overrides) -> ReferenceVLA:
    """The reference model with ``ReferenceConfig`` fields overridden (e.g. ``modes=5``)."""
    return ReferenceVLA(ReferenceConfig(**overrides))
