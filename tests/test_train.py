"""vla-train: the flow-matching loss, samples built by the runtime's own input code, reproducibility, the
weights file and vla-export reference building from it.

Tiny sizes and short drives everywhere: what is checked is that each part does its job (the sampler lands on
what it was trained on, the loss falls on real drives, a seed fixes the weights), not that the policy drives.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_cli
from vla.export import load as export_load
from vla.export.reference_v2 import ReferenceConfig2, ReferenceVLA2
from vla.train.card import render_card
from vla.train.cli import QUICK_MODEL, main, parse_seeds
from vla.train.flow import Batch, best_mode, flow_loss, waypoint_weights

#: The flow test's model: tiny, 16 waypoints (what is learnt is the same at 64).
TINY = dict(QUICK_MODEL, waypoints=16)
SCALE = torch.tensor([1.0, 0.02])  # the expert's unit space (reference_v2._CONTROL_SCALE)



@pytest.fixture
def sim_world():
    """The synthetic world's module; tests of drives skip where it is not installed."""
    return pytest.importorskip("vla.sim.world", reason="the synthetic world (vla.sim.world) is not here")


def _toy_batch(model: ReferenceVLA2, g: torch.Generator) -> Batch:
    """Four samples told apart by their command and speed, each with its own plan (brake, turn, ...)."""
    c = model.config
    t = torch.arange(c.waypoints) * c.dt
    plans = [(1.5, 0.0), (-2.0, 0.05), (0.5, -0.08), (0.0, 0.02)]
    labels = torch.stack([torch.stack([a * torch.exp(-t), k * torch.ones_like(t)], -1) for a, k in plans])
    ego = torch.zeros(4, c.ego_steps, 6)
    ego[..., 3] = torch.tensor([5.0, 10.0, 8.0, 0.0])[:, None]
    images = torch.randint(0, 255, (4, len(c.cameras), 3, c.image_height, c.image_width), dtype=torch.uint8,
                           generator=g)
    return Batch(images, ego, torch.arange(4), torch.zeros(4, c.text_len, dtype=torch.long),
                 torch.ones(4, c.text_len, dtype=torch.bool), labels)


def test_euler_steps_from_noise_land_on_the_trained_labels():
    """Trained on four samples, the model's own forward (K Euler steps from fresh noise, best mode by score)
    gives each sample's label: the loss regresses exactly the velocity the exported stages integrate."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = ReferenceVLA2(ReferenceConfig2(**TINY))
    g = torch.Generator().manual_seed(1)
    batch = _toy_batch(model, g)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    model.train()
    first = None
    for _ in range(400):
        loss = flow_loss(model, batch, g, draws=8)
        first = loss.flow if first is None else first
        opt.zero_grad()
        loss.total.backward()
        opt.step()
    model.eval()
    assert loss.flow < 0.2 * first
    c = model.config
    noise = torch.randn(4, c.modes, c.waypoints, 2, generator=g)
    with torch.no_grad():
        controls, score, _ = model(batch.images, batch.ego, batch.nav_cmd, batch.text_ids, batch.text_mask, noise)
    err = ((best_mode(controls, score) - batch.labels) / SCALE).abs().mean()
    spread = ((batch.labels - batch.labels.mean(0)) / SCALE).abs().mean()
    assert err < 0.25 * spread, (float(err), float(spread))


def test_waypoint_weights_favour_the_start_and_average_one():
    w = waypoint_weights(64, 0.1)
    assert abs(float(w.mean()) - 1.0) < 1e-6
    assert float(w[0]) > 3.0 * float(w[-1])
    assert bool((w[1:] <= w[:-1]).all())


def _tiny_trained(tmp_path, seed: int = 3) -> tuple[ReferenceVLA2, object]:
    from vla.train.loop import save_weights

    model = ReferenceVLA2(ReferenceConfig2(**dict(TINY, seed=seed)))
    with torch.no_grad():  # weights no seeded build has: a load that ignored the file would show
        for p in model.parameters():
            p.add_(0.01)
    return model, save_weights(model, tmp_path / "reference-v2.safetensors", {"seed": str(seed)})


def test_weights_round_trip_with_the_config_in_the_metadata(tmp_path):
    from safetensors import safe_open

    from vla.train.loop import load_weights

    model, path = _tiny_trained(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["config"])["vit_dim"] == TINY["vit_dim"]
    assert meta["format"] == "vla-reference-2"
    back = load_weights(path)
    assert back.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k


def test_export_reference_builds_from_the_trained_weights(tmp_path, monkeypatch, capsys):
    """`vla-export reference` loads the file (its config, its weights) and says so in the manifest; with
    --config it exports the seeded model and says the weights are not used."""
    from vla.export.cli import main as export_main

    model, path = _tiny_trained(tmp_path)
    monkeypatch.setattr(export_load, "TRAINED_REFERENCE", path)
    loaded = export_load.load_model("reference")
    assert loaded.exportable.config == model.config
    assert torch.equal(loaded.exportable.state_dict()["expert.velocity_out.weight"],
                       model.state_dict()["expert.velocity_out.weight"])
    assert loaded.spec["model"]["weights"] == {"trained": True, "file": path.name, "by": "vla-train", "seed": 3}

    out = tmp_path / "bundle"
    assert export_main(["reference", "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["weights"]["trained"] is True
    assert manifest["model"]["config"]["vit_dim"] == TINY["vit_dim"]

    untrained = export_load.load_model("reference", config=["vit_dim=32", "vit_heads=1"])
    assert "weights" not in untrained.spec["model"]
    assert "trained weights reference-v2.safetensors are not used" in capsys.readouterr().err


def test_card_names_data_seed_time_and_metrics():
    report = {
        "command": "vla-train --seed 4", "seed": 4, "model_config": {**vars(ReferenceConfig2()), "cameras": ["front"]},
        "parameters": 1234567, "size_reason": "small", "weights_mb": 5.9, "optimiser": "AdamW",
        "data": {"train_seeds": "0..35", "samples": 10800, "by_source": {"dart": 7000, "dagger": 3800},
                 "dart": "OU", "dagger_rounds": 3, "dagger_seeds": "36..71", "seconds": 300.0},
        "steps": 4000, "batch": 32, "draws": 4, "train_seconds": 1800.0, "total_seconds": 3300.0,
        "machine": "2 cores", "final_loss": {"flow": 0.1234, "score": 1.0}, "val_loss": 0.2,
        "closed_loop": {"seeds": "1000..1019", "scenarios": 20, "completion": 0.97, "min_completion": 0.9,
                        "goals": 18, "collisions": 1, "offroad_ticks": 0,
                        "per_seed": [{"seed": 1000, "completion": 1.0, "end": "goal"}]},
    }
    text = render_card(report)
    for needle in ("vla-train --seed 4", "Seed 4", "1,234,567", "0..35", "dagger: 3,800", "30.0 min of 55.0",
                   "flow 0.1234", "mean 97.0 %", "18 of 20", "| collisions | 1 |", "1000: 100.0 % goal"):
        assert needle in text, needle


def test_eval_seed_ranges():
    assert parse_seeds("1000..1002") == (1000, 1001, 1002)
    assert parse_seeds("3,5") == (3, 5)
    assert parse_seeds("none") == ()


def test_bad_arguments_are_one_line_errors(tmp_path):
    cmd = [sys.executable, "-m", "vla.train.cli"]
    assert_one_line_error(run_cli(cmd, "--quick", "--out", tmp_path, "--config", "vit_dimm=3"), "vit_dimm")
    assert_one_line_error(run_cli(cmd, "--quick", "--out", tmp_path, "--config", "patch=7"), "patch 7")
    assert_one_line_error(run_cli(cmd, "--quick", "--out", tmp_path, "--eval-seeds", "9..3"), "--eval-seeds")
    assert_one_line_error(run_cli(cmd, "--quick", "--out", tmp_path, "--minutes", "0"), "--minutes")


# ---- with the world ---------------------------------------------------------------------------------------
def test_observer_feeds_what_the_runtime_would(sim_world):
    """Frames rendered at the manifest's camera size reach the image input unchanged (NCHW, manifest camera
    order); the ego input's newest row is the world's speed; the command is the navigator's."""
    from vla.train.data import Observer, manifest_of

    model = ReferenceVLA2(ReferenceConfig2(**TINY))
    manifest = manifest_of(model)
    world = sim_world.World(sim_world.make_scenario(5))
    obs = Observer(manifest, world.ground())
    for _ in range(3):
        world.step(0.1, 2.0, 0.0)
    seen = obs.observe(world)
    for i, name in enumerate(obs.names):
        assert np.array_equal(seen.images[i], obs.frames[name].transpose(2, 0, 1)), name
    assert seen.images.std() > 5  # a rendered road, not an empty buffer
    assert seen.ego[-1, 3] == pytest.approx(world.ego.speed, abs=1e-4)
    assert seen.command.text == world.command()


def test_loss_falls_on_expert_drives(sim_world):
    from vla.train.data import Dart, Samples, expert_drive, manifest_of
    from vla.train.loop import TrainConfig, Trainer, held_out_loss

    torch.manual_seed(0)
    model = ReferenceVLA2(ReferenceConfig2(**QUICK_MODEL))
    manifest = manifest_of(model)
    parts = [expert_drive(s, manifest, index=s, dart=Dart(), max_ticks=20)[0] for s in (1, 2)]
    data = Samples.concat(parts)
    assert data.labels.shape[1:] == (64, 2) and data.images.dtype == np.uint8
    before = held_out_loss(model, data, 0)
    cfg = TrainConfig(batch=8, draws=2, lr=2e-3, warmup=5, threads=1)
    trainer = Trainer(model, cfg, 60, lambda _line: None, deadline=float("inf"))
    trainer.run(data, 60, "test")
    after = held_out_loss(model, data, 0)
    assert after < 0.7 * before, (before, after)


def test_same_seed_same_weights_and_a_card(sim_world, tmp_path):
    """Two quick runs with one seed write identical weight files (data, batches, noise and DAgger rollouts
    all seeded); another seed gives other weights."""
    from safetensors import safe_open

    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / name
        assert main(["--quick", "--out", str(out), "--seed", str(seed), "--eval-seeds", "none"]) == 0
        with safe_open(str(out / "reference-v2.safetensors"), framework="pt") as f:
            runs[name] = (f.metadata(), {k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    (meta_a, a), (meta_b, b), (_, c) = runs["a"], runs["b"], runs["c"]
    assert meta_a == meta_b and a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    card = (tmp_path / "a" / "MODEL_CARD.md").read_text()
    assert "--quick" in card and "dagger" in card


def test_vla_train_cli_runs_and_reports(sim_world, tmp_path):
    proc = run_cli([sys.executable, "-m", "vla.train.cli"], "--quick", "--out", tmp_path / "w")
    assert proc.returncode == 0, proc.stderr
    assert "closed loop on scenarios 1000" in proc.stdout
    assert (tmp_path / "w" / "reference-v2.safetensors").is_file()
