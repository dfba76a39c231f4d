"""Manifest validation: the reference spec passes; each kind of mistake is named precisely."""

from __future__ import annotations

import copy

import pytest

from vla.runtime.errors import ManifestError
from vla.runtime.manifest import check_against_graph, parse_manifest


@pytest.fixture(scope="module")
def spec() -> dict:
    from vla.export.reference import build_reference

    return build_reference().io_spec()


def _broken(spec: dict, edit) -> dict:
    raw = copy.deepcopy(spec)
    edit(raw)
    return raw


def test_reference_spec_is_valid(spec):
    m = parse_manifest(spec)
    assert m.camera_names == ["front", "left", "right"]
    assert [t.name for t in m.inputs_with("state")] == ["memory", "memory_valid"]
    assert m.outputs_with("trajectory")[0].detail["dt"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda r: r.update(schema_version=2), "schema_version 2 is not supported"),
        (lambda r: r["inputs"][3].update(role="steering"), "inputs[3]"),
        (lambda r: r["inputs"][0].update(dtype="float64"), "inputs[0].dtype"),
        (lambda r: r["inputs"][0].pop("camera"), "inputs[0]"),
        (lambda r: r["inputs"][0]["camera"].update(color="YUV"), "inputs[0].camera.color"),
        (lambda r: r["inputs"][0].update(shape=[1, 2, 3, 128, 256]), "camera block describes"),
        (lambda r: r["inputs"][1]["state"].update(from_output="score"), "not a state output"),
        (lambda r: r["outputs"][3]["state"].update(to_input="ego"), "not a state input"),
        (lambda r: r["inputs"][2].update(shape=[1, 5]), "changes dtype/shape"),
        (lambda r: r["inputs"].append(copy.deepcopy(r["inputs"][3])), "duplicate input"),
        (lambda r: r.pop("vocabulary"), "need a 'vocabulary'"),
        (lambda r: r["vocabulary"].update(pad="<nothing>"), "pad token"),
        (lambda r: r["outputs"][0].update(role="aux"), "exactly one output"),
        (lambda r: r["outputs"][1].update(shape=[1, 4]), "score 'score'"),
        (lambda r: r["outputs"][0]["trajectory"].update(fields=["x", "y"]), "trajectory 'trajectory'"),
        (lambda r: r["outputs"][0]["trajectory"].update(horizon_s=5.0), "horizon_s 5.0 != dt x points = 6.4"),
        (lambda r: r.update(extra_field=1), "Additional properties"),
    ],
)
def test_mistakes_are_named(spec, edit, needle):
    with pytest.raises(ManifestError) as info:
        parse_manifest(_broken(spec, edit))
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def _graph(m):
    return ({t.name: (t.dtype, t.shape) for t in m.inputs}, {t.name: (t.dtype, t.shape) for t in m.outputs})


def test_graph_agreement(spec):
    m = parse_manifest(spec)
    ins, outs = _graph(m)
    check_against_graph(m, ins, outs, "g")  # agrees
    ins_sym = dict(ins, images=("uint8", ("batch", 3, 3, 128, 256)))
    check_against_graph(m, ins_sym, outs, "g")  # a symbolic dim matches the manifest's fixed size
    cases = [
        (dict(ins, images=("float32", ins["images"][1])), outs, "is float32 in the graph but uint8"),
        (dict(ins, ego=("float32", (1, 8, 6))), outs, "has shape [1, 8, 6] in the graph"),
        ({k: v for k, v in ins.items() if k != "noise"}, outs, "['noise'] are not in the graph"),
        (dict(ins, extra=("float32", (1,))), outs, "['extra'] are not described"),
        (ins, {k: v for k, v in outs.items() if k != "score"}, "output(s) ['score']"),
    ]
    for gi, go, needle in cases:
        with pytest.raises(ManifestError, match=None) as info:
            check_against_graph(m, gi, go, "g")
        assert needle in str(info.value)
