"""Stand-in third-party policies for the INT8 work, in plain PyTorch (no LeRobot, timm or transformers):
a conv-heavy ResNet-like policy over three cameras, and a transformer policy. Each is an ``nn.Module``
with an ``io_spec()`` (what ``vla-export`` reads), random but seeded weights, small resolutions.

``save_archive(name, path)`` writes a torch.export archive (``.pt2`` with ``vla_spec.json``) that
``vla-export`` takes as MODEL. Used by ``int8_zoo.py`` until (and beside) the zoo in ``tests/zoo/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

EGO = {"fields": ["x", "y", "yaw", "v", "a", "yaw_rate"], "rate_hz": 10.0, "frame": "ego"}
STEPS = 16


def _camera_input(names: list[str], height: int, width: int) -> dict:
    return {"name": "images", "dtype": "uint8", "role": "camera", "shape": [1, len(names), 3, height, width],
            "camera": {"names": names, "layout": "NCHW", "color": "RGB", "height": height, "width": width,
                       "normalization": {"mean": [127.5] * 3, "std": [64.0] * 3, "in_graph": True}}}


def _spec(name: str, cameras: list[str], height: int, width: int) -> dict:
    return {"schema_version": 1, "model": {"name": name},
            "inputs": [_camera_input(cameras, height, width),
                       {"name": "ego", "dtype": "float32", "role": "ego", "shape": [1, 16, 6], "ego": EGO}],
            "outputs": [{"name": "trajectory", "dtype": "float32", "role": "trajectory",
                         "shape": [1, 1, STEPS, 3],
                         "trajectory": {"dt": 0.1, "horizon_s": 1.6, "frame": "ego", "fields": ["x", "y", "yaw"]}}]}


class _Planner(nn.Module):
    """Features + ego -> a trajectory: a constant-speed prior from the ego speed plus a learned residual."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.ego = nn.Linear(16 * 6, 64)
        self.mlp = nn.Sequential(nn.Linear(features + 64, 256), nn.GELU(), nn.Linear(256, STEPS * 2))
        self.register_buffer("times", 0.1 * torch.arange(1, STEPS + 1, dtype=torch.float32))

    def forward(self, feats: torch.Tensor, ego: torch.Tensor) -> torch.Tensor:
        e = torch.relu(self.ego(ego.flatten(1) / 10.0))
        steps = self.mlp(torch.cat([feats, e], dim=-1)).view(1, 1, STEPS, 2)
        residual = torch.cumsum(0.5 * steps, dim=2)
        prior_x = ego[:, -1, 3, None, None] * self.times[None, None, :]
        xy = residual + torch.stack([prior_x, torch.zeros_like(prior_x)], dim=-1)
        yaw = torch.atan2(xy[..., 1:2], xy[..., 0:1] + 1.0)
        return torch.cat([xy, yaw], dim=-1)


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


class ConvPolicy(nn.Module):
    """ResNet-18-like backbone shared by three cameras (128x224 each), pooled, then a planner MLP."""

    def __init__(self, height: int = 128, width: int = 224, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.cameras, self.height, self.width = ["front", "left", "right"], height, width
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers.append(nn.Sequential(_Basic(cin, w, 1 if i == 0 else 2), _Basic(w, w, 1)))
            cin = w
        self.backbone = nn.Sequential(*layers)
        self.neck = nn.Linear(3 * widths[-1], 256)
        self.planner = _Planner(256)
        _randomise_bn(self)

    def forward(self, images: torch.Tensor, ego: torch.Tensor) -> torch.Tensor:
        x = (images.flatten(0, 1).float() - 127.5) / 64.0
        f = self.backbone(self.stem(x)).mean(dim=(2, 3))  # [cams, C]
        return self.planner(torch.relu(self.neck(f.reshape(1, -1))), ego)

    def io_spec(self) -> dict:
        return _spec("conv-standin", self.cameras, self.height, self.width)


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TransformerPolicy(nn.Module):
    """ViT-like encoder over 16x16 patches of three cameras (96x160 each: 180 tokens), then a planner."""

    def __init__(self, height: int = 96, width: int = 160, dim: int = 256, depth: int = 4, heads: int = 4) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.cameras, self.height, self.width = ["front", "left", "right"], height, width
        self.patch = nn.Conv2d(3, dim, 16, 16)
        tokens = 3 * (height // 16) * (width // 16)
        self.pos = nn.Parameter(0.02 * torch.randn(1, tokens, dim))
        self.layers = nn.Sequential(*[_Layer(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.planner = _Planner(dim)

    def forward(self, images: torch.Tensor, ego: torch.Tensor) -> torch.Tensor:
        x = (images.flatten(0, 1).float() - 127.5) / 64.0
        t = self.patch(x).flatten(2).transpose(1, 2).reshape(1, -1, self.pos.shape[-1]) + self.pos
        t = self.norm(self.layers(t))
        return self.planner(t.mean(dim=1), ego)

    def io_spec(self) -> dict:
        return _spec("transformer-standin", self.cameras, self.height, self.width)


def _randomise_bn(model: nn.Module) -> None:
    """Trained-looking BatchNorm statistics (random weights alone give identity BNs)."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + 0.5 * torch.rand(m.num_features, generator=g))


STANDINS = {"conv": ConvPolicy, "transformer": TransformerPolicy}


def save_archive(name: str, path: Path) -> Path:
    """The stand-in as a torch.export archive with its spec, ready for ``vla-export``."""
    net = STANDINS[name]().eval()
    spec = net.io_spec()
    args = tuple(torch.zeros(t["shape"], dtype=getattr(torch, t["dtype"])) for t in spec["inputs"])
    torch.export.save(torch.export.export(net, args), str(path), extra_files={"vla_spec.json": json.dumps(spec)})
    return path
