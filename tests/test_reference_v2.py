"""Reference model 2: three stages (vision, context, expert) that compose into one decision.

The composed forward is the contract a staged runtime reproduces by calling the submodules by hand,
so it is checked bit-exact against that; the exporter reads stage signatures, so their parameter
names are checked against the model's inputs and earlier stages' outputs; each stage is exported to
ONNX and run in ONNX Runtime against PyTorch. Tiny sizes everywhere except where physical
plausibility of the default model's untrained outputs is the point.
"""

from __future__ import annotations

import inspect
import logging
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vla.export.reference import EGO_FIELDS, TOKENS
from vla.export.reference_v2 import (
    ActionExpert,
    ContextModel,
    ReferenceConfig2,
    ReferenceVLA2,
    VisionEncoder,
    build_reference_v2,
)
from vla.runtime.errors import VlaError

TINY = dict(image_height=32, image_width=64, vit_dim=32, vit_depth=1, vit_heads=2, dim=32, heads=2,
            context_tokens=4, context_depth=1, world_depth=1, expert_dim=32, expert_heads=2, expert_depth=1)
_TORCH_DTYPES = {"uint8": torch.uint8, "float32": torch.float32, "int64": torch.int64, "bool": torch.bool}
# The runtime's default trajectory limits (--max-accel, --max-curvature).
MAX_ACCEL = 8.0
MAX_CURVATURE = 0.3


def feeds(model: ReferenceVLA2, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs built from io_spec alone, with ego values in a driving range (speeds 0-30 m/s)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for spec in model.io_spec(batch)["inputs"]:
        shape, dtype = spec["shape"], _TORCH_DTYPES[spec["dtype"]]
        if spec["role"] == "camera":
            out[spec["name"]] = torch.randint(0, 256, shape, dtype=dtype, generator=g)
        elif spec["role"] == "ego":
            ego = torch.randn(shape, generator=g)
            ego[..., EGO_FIELDS.index("v")] = 30.0 * torch.rand(shape[:2], generator=g)
            ego[..., EGO_FIELDS.index("a")] = 6.0 * torch.rand(shape[:2], generator=g) - 3.0
            ego[..., EGO_FIELDS.index("yaw_rate")] = torch.rand(shape[:2], generator=g) - 0.5
            out[spec["name"]] = ego
        elif spec["name"] == "nav_cmd":
            out[spec["name"]] = torch.randint(0, len(model.io_spec()["vocabulary"]["commands"]), shape, generator=g)
        elif spec["name"] == "text_ids":
            out[spec["name"]] = torch.randint(1, len(TOKENS), shape, generator=g)
        elif spec["name"] == "text_mask":
            mask = torch.ones(shape, dtype=torch.bool)
            mask[:, shape[1] // 2:] = False  # padded second half
            out[spec["name"]] = mask
        else:
            out[spec["name"]] = torch.randn(shape, generator=g)
    return out


def run_by_hand(model: ReferenceVLA2, f: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """What a staged runtime does: vision, context, then K expert calls feeding next_sample back."""
    k = model.config.flow_steps
    vision_tokens = model.vision(f["images"])
    context, next_context = model.context(vision_tokens, f["ego"], f["nav_cmd"], f["text_ids"], f["text_mask"])
    sample = f["noise"]
    for i in range(k):
        t = torch.full((sample.shape[0],), i / k, dtype=torch.float32)
        sample, controls, score = model.expert(sample, t, context, f["ego"])
    return controls, score, next_context


@pytest.fixture(scope="module")
def tiny() -> ReferenceVLA2:
    return build_reference_v2(**TINY)


@torch.no_grad()
def test_every_stage_output_has_its_shape(tiny):
    c, b = tiny.config, 2
    f = feeds(tiny, b)
    vision_tokens = tiny.vision(f["images"])
    per_camera = (32 // 16 // c.vision_pool) * (64 // 16 // c.vision_pool)
    assert vision_tokens.shape == (b, len(c.cameras) * per_camera, c.vit_dim)
    context, next_context = tiny.context(vision_tokens, f["ego"], f["nav_cmd"], f["text_ids"], f["text_mask"])
    assert context.shape == next_context.shape == (b, c.context_tokens, c.dim)
    assert not torch.equal(context, next_context)
    next_sample, controls, score = tiny.expert(f["noise"], torch.zeros(b), context, f["ego"])
    assert next_sample.shape == controls.shape == (b, c.modes, c.waypoints, 2)
    assert score.shape == (b, c.modes)
    torch.testing.assert_close(score.sum(-1), torch.ones(b))
    for module, outputs in ((tiny.vision, (vision_tokens,)), (tiny.context, (context, next_context)),
                            (tiny.expert, (next_sample, controls, score))):
        assert len(module.output_names) == len(outputs)
        assert all(torch.isfinite(o).all() for o in outputs)


@torch.no_grad()
def test_composed_forward_equals_the_stages_run_by_hand(tiny):
    f = feeds(tiny)
    composed = tiny(**f)
    for name, a, b in zip(tiny.output_names, composed, run_by_hand(tiny, f), strict=True):
        assert torch.equal(a, b), name


@torch.no_grad()
def test_same_seed_same_weights_and_stages_built_alone_match():
    a, b = build_reference_v2(**TINY).state_dict(), build_reference_v2(**TINY).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = build_reference_v2(**TINY, seed=1).state_dict()
    assert any(not torch.equal(a[k], other[k]) for k in a)
    config = ReferenceConfig2(**TINY)
    for name, cls in (("vision", VisionEncoder), ("context", ContextModel), ("expert", ActionExpert)):
        alone = cls(config).state_dict()
        assert all(torch.equal(alone[k], a[f"{name}.{k}"]) for k in alone), name
    # Resizing the expert leaves the other stages' weights as they were.
    deeper = build_reference_v2(**{**TINY, "expert_depth": 2}).state_dict()
    assert all(torch.equal(a[k], deeper[k]) for k in a if not k.startswith("expert."))


@torch.no_grad()
def test_flow_steps_move_the_sample_and_change_the_decision():
    one, ten = build_reference_v2(**TINY, flow_steps=1), build_reference_v2(**TINY, flow_steps=10)
    f = feeds(one)
    assert ten.stages_spec()["action"]["repeat"] == 10
    controls_1, _, next_context_1 = one(**f)
    controls_10, _, next_context_10 = ten(**f)
    assert torch.equal(next_context_1, next_context_10)  # the VLM half does not depend on K
    assert not torch.allclose(controls_1, controls_10)
    context, _ = ten.context(ten.vision(f["images"]), f["ego"], f["nav_cmd"], f["text_ids"], f["text_mask"])
    t = torch.full((2,), 0.3)
    next_sample, _, _ = ten.expert(f["noise"], t, context, f["ego"])
    assert not torch.allclose(next_sample, f["noise"])
    # t is a real input: another flow time gives another velocity.
    assert not torch.equal(ten.expert(f["noise"], torch.full((2,), 0.7), context, f["ego"])[0], next_sample)


@torch.no_grad()
def test_default_model_size_and_physically_plausible_untrained_controls():
    model = build_reference_v2()
    params = sum(p.numel() for p in model.parameters())
    assert 5e6 <= params <= 12e6
    assert model.io_spec()["model"]["parameters"] == params
    f = feeds(model, batch=8, seed=3)
    controls, score, next_context = model(**f)
    assert torch.isfinite(controls).all() and torch.isfinite(next_context).all()
    accel, curvature = controls[..., 0], controls[..., 1]
    assert accel.abs().max() < MAX_ACCEL
    assert curvature.abs().max() < MAX_CURVATURE
    assert 0.5 < accel.std() < 3.0  # spread like sampled driving, not collapsed onto the prior
    torch.testing.assert_close(score.sum(-1), torch.ones(8))


@torch.no_grad()
def test_io_spec_matches_forward_and_its_outputs(tiny):
    spec = tiny.io_spec(batch=2)
    assert [i["name"] for i in spec["inputs"]] == list(inspect.signature(tiny.forward).parameters)
    assert [o["name"] for o in spec["outputs"]] == list(tiny.output_names)
    assert spec["model"]["name"] == "vla-reference-2" and spec["model"]["source"] == "vla.export.reference_v2"
    assert spec["schema_version"] == 1 and spec["model"]["config"]["flow_steps"] == tiny.config.flow_steps
    outputs = tiny(**feeds(tiny))
    for o, value in zip(spec["outputs"], outputs, strict=True):
        assert list(value.shape) == o["shape"] and value.dtype == _TORCH_DTYPES[o["dtype"]], o["name"]
    trajectory = spec["outputs"][0]["trajectory"]
    assert trajectory == {"dt": 0.1, "horizon_s": 6.4, "frame": "ego", "fields": ["accel", "curvature"]}
    assert [o["role"] for o in spec["outputs"]] == ["trajectory", "score", "aux"]
    assert "world model" in spec["outputs"][2]["description"]
    assert spec["vocabulary"]["tokens"] == list(TOKENS)


def test_stages_spec_is_the_declared_one_and_names_what_exists(tiny):
    spec = tiny.stages_spec()
    assert spec == {
        "vision": "vision",
        "context": {"module": "context", "rate": "async", "max_age_ms": 300},
        "action": {"module": "expert", "repeat": 10,
                   "sample": {"input": "sample", "output": "next_sample", "init": "noise"}, "time": "t"},
    }
    available = {i["name"] for i in tiny.io_spec()["inputs"]}
    for stage in spec.values():
        name = stage if isinstance(stage, str) else stage["module"]
        module = getattr(tiny, name)
        assert isinstance(module, torch.nn.Module), name
        loop = {} if isinstance(stage, str) else stage
        extra = set()
        if "sample" in loop:
            assert loop["sample"]["init"] in available
            assert loop["sample"]["output"] in module.output_names
            extra = {loop["sample"]["input"], loop["time"]}
        params = set(inspect.signature(module.forward).parameters)
        assert params <= available | extra, (name, params - available - extra)
        assert extra <= params
        available |= set(module.output_names)
    assert set(tiny.output_names) <= available


def test_every_stage_exports_to_onnx_and_matches_in_onnx_runtime(tiny, tmp_path):
    f = feeds(tiny)
    with torch.no_grad():
        vision_tokens = tiny.vision(f["images"])
        context, _ = tiny.context(vision_tokens, f["ego"], f["nav_cmd"], f["text_ids"], f["text_mask"])
    stage_args = {
        "vision": (f["images"],),
        "context": (vision_tokens, f["ego"], f["nav_cmd"], f["text_ids"], f["text_mask"]),
        "expert": (f["noise"], torch.full((2,), 0.4), context, f["ego"]),
    }
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    logging.disable(logging.WARNING)
    try:
        for name, args in stage_args.items():
            module = getattr(tiny, name)
            inputs = list(inspect.signature(module.forward).parameters)
            path = tmp_path / f"{name}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, str(path), dynamo=True, opset_version=18, input_names=inputs,
                                  output_names=list(module.output_names), external_data=False, verbose=False)
            session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            assert [i.name for i in session.get_inputs()] == inputs, name
            got = session.run(list(module.output_names), {n: a.numpy() for n, a in zip(inputs, args, strict=True)})
            with torch.no_grad():
                want = module(*args)
            want = want if isinstance(want, tuple) else (want,)
            for out_name, g, w in zip(module.output_names, got, want, strict=True):
                np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"{name}.{out_name}")
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("overrides, needle", [
    ({"image_height": 100}, "not a multiple of patch"),
    ({"vision_pool": 3}, "vision_pool"),
    ({"waypoint_chunk": 5}, "waypoint_chunk"),
    ({"expert_dim": 30, "expert_heads": 4}, "expert_heads"),
    ({"flow_steps": 0}, "flow_steps"),
    ({"no_such_field": 1}, "no_such_field"),
])
def test_bad_sizes_are_one_line_user_errors(overrides, needle):
    with pytest.raises(VlaError, match=needle) as info:
        build_reference_v2(**{**TINY, **overrides})
    assert "\n" not in str(info.value)
