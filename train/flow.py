"""The flow-matching loss of reference model 2, and the sampler it is checked against.

The action expert is trained exactly as the runtime calls it: ``ActionExpert.forward`` takes a sample, a flow
time and the context and returns ``next_sample = sample + v / K``; the velocity ``v`` it implies is regressed
on the straight-line (rectified flow) target ``x1 - x0``, where ``x0`` is the noise input and ``x1`` the expert
driver's controls in the model's unit space, ``(controls - prior(ego)) / control_scale``. So the K Euler
steps ``ReferenceVLA2.forward`` runs from the noise land on a label-like plan, and a zero sample means "keep
doing what the car does now" (the prior), as the untrained model already assumed.

The score head (softmax over the M modes, read at the last Euler step by the runtime's decode) is trained
with a cross-entropy towards the mode whose one-step estimate of the end point, ``x_t + (1 - t) v``, is
closest to the label: at the last step that estimate *is* the plan the runtime decodes, so the score learns
to rank the modes by how close to the expert each one ends up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vla.export.reference_v2 import ReferenceVLA2

__all__ = ["CHANNEL_WEIGHTS", "AuxHead", "Batch", "FlowLoss", "best_mode", "flow_loss", "to_unit",
           "waypoint_weights"]


@dataclass
class Batch:
    """One training batch in the model's input layout (manifest order) plus the expert's label."""

    images: torch.Tensor  # uint8 [B, C, 3, H, W]
    ego: torch.Tensor  # float32 [B, S, 6]
    nav_cmd: torch.Tensor  # int64 [B]
    text_ids: torch.Tensor  # int64 [B, L]
    text_mask: torch.Tensor  # bool [B, L]
    labels: torch.Tensor  # float32 [B, T, 2]: (accel m/s², curvature 1/m) every dt
    route: torch.Tensor | None = None  # float32 [B, R]: the auxiliary target (data.route_ahead), if trained

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class FlowLoss:
    """The loss and its parts (floats, for progress lines)."""

    total: torch.Tensor
    flow: float
    score: float
    first_control: float  # mean |error| of the one-step estimate's first control, unit space (what is executed)
    aux: float = 0.0  # the auxiliary route loss (0 without an AuxHead)


class AuxHead(nn.Module):
    """Training-only head: the route ahead in the ego frame (``data.route_ahead``) from the mean context token.

    Not part of the exported model (the weights file holds ReferenceVLA2 only): it exists so the lane's
    position, heading and upcoming turn are learnt by the vision and context stages from a direct target.
    """

    def __init__(self, dim: int, outputs: int, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 31 + 7)
            self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, outputs))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.net(context.mean(dim=1))


def waypoint_weights(waypoints: int, dt: float, near_s: float = 1.0, near_gain: float = 3.0) -> torch.Tensor:
    """[T] weights with mean 1: the plan's first ~``near_s`` seconds count ``1 + near_gain`` times more.

    Why: a tracking controller executes the start of each plan and the policy re-plans every tick, so
    errors in the first second decide where the car goes; the far end only shapes the plan.
    """
    t = torch.arange(waypoints, dtype=torch.float32) * dt
    w = 1.0 + near_gain * torch.exp(-t / near_s)
    return w / w.mean()


#: Per-channel loss weights (accel, curvature), mean 1. One unit of the flow's space is 1 m/s² of acceleration
#: but 0.02 1/m of curvature, which at 10 m/s is 2 m/s² of lateral acceleration: the pursuit of the lane
#: needs the curvature finer (in units) than the speed profile needs the acceleration.
CHANNEL_WEIGHTS = (2.0 / 3.0, 4.0 / 3.0)


def to_unit(model: ReferenceVLA2, labels: torch.Tensor, ego: torch.Tensor) -> torch.Tensor:
    """Expert controls [B, T, 2] -> the flow's target end point x1 [B, 1, T, 2] (unit space)."""
    expert = model.expert
    return (labels[:, None] - expert.prior(ego)) / expert.control_scale


def flow_loss(
    model: ReferenceVLA2,
    batch: Batch,
    generator: torch.Generator,
    *,
    draws: int = 1,
    score_weight: float = 0.1,
    weights: torch.Tensor | None = None,
    aux: AuxHead | None = None,
    aux_weight: float = 1.0,
) -> FlowLoss:
    """Flow-matching loss on ``batch``: ``draws`` independent (noise, t) pairs per sample share one run of
    the vision and context stages (the expensive half), so each image teaches the cheap expert several times.

    All M modes get their own noise and are regressed on the same label (the modes are samples of one
    distribution; the score tells them apart). ``generator`` draws the noise and times, so a seed fixes them.
    """
    c = model.config
    k = c.flow_steps
    context, _ = model.context(model.vision(batch.images), batch.ego, batch.nav_cmd, batch.text_ids,
                               batch.text_mask)
    aux_loss = None
    if aux is not None and batch.route is not None:
        aux_loss = F.smooth_l1_loss(aux(context), batch.route, beta=0.1)
    ego = batch.ego
    x1 = to_unit(model, batch.labels, ego)  # [B, 1, T, 2]
    if draws > 1:  # the expert sees each context `draws` times, each with its own noise and time
        context = context.repeat_interleave(draws, dim=0)
        ego = ego.repeat_interleave(draws, dim=0)
        x1 = x1.repeat_interleave(draws, dim=0)
    n = x1.shape[0]
    x0 = torch.randn((n, c.modes, c.waypoints, 2), generator=generator)
    t = torch.rand((n,), generator=generator)
    tt = t[:, None, None, None]
    xt = (1.0 - tt) * x0 + tt * x1
    next_sample, _, score = model.expert(xt, t, context, ego)
    v = (next_sample - xt) * k  # the velocity the expert's Euler step applies
    w = (weights if weights is not None else waypoint_weights(c.waypoints, c.dt))[None, None, :, None] * \
        torch.tensor(CHANNEL_WEIGHTS)
    err = (v - (x1 - x0)) ** 2 * w  # [N, M, T, 2]
    flow = err.mean()
    # The mode whose end-point estimate lands closest to the label is the one the score should pick.
    estimate = xt + (1.0 - tt) * v
    dist = ((estimate.detach() - x1) ** 2 * w).mean(dim=(2, 3))  # [N, M]
    target = dist.argmin(dim=1)
    score_ce = F.nll_loss(torch.log(score.clamp_min(1e-6)), target)
    total = flow + score_weight * score_ce
    if aux_loss is not None:
        total = total + aux_weight * aux_loss
    first = (estimate.detach()[:, :, 0] - x1[:, :, 0]).abs().mean()
    return FlowLoss(total, float(flow.detach()), float(score_ce.detach()), float(first),
                    0.0 if aux_loss is None else float(aux_loss.detach()))


def best_mode(controls: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """[B, T, 2]: each item's highest-score mode, as the runtime's decode picks it."""
    idx = score.argmax(dim=1)
    return controls[torch.arange(controls.shape[0]), idx]
