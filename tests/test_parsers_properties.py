"""Property-based tests (Hypothesis) for the parsers the runtime exposes to the outside world (issue 19, "Bad input").

Each parser takes input that someone else wrote (a UDP sender, a manifest file, a user's route command), so
its contract is: a value that says exactly what was sent, or the module's one-line user error, and never a
crash (TypeError, KeyError, RecursionError ...), which would kill a receiver thread or print a traceback.

- ego UDP JSON (``parse_ego_message``, ``UdpEgoInput.accept``): ValueError only; valid messages round-trip;
  each broken field is named; the seq ordering rule of the module docstring holds over datagram sequences.
- the manifest (``parse_manifest``, ``parse_manifest_text``): ManifestError only, one line, for arbitrary JSON
  and for random mutations of real manifests (the reference models' own and a staged one); an accepted
  manifest is usable by what reads it next (stages, cameras, the command encoder).
- the command channel (``CommandEncoder``, ``encode_command``): VlaError only; ids are the words of the text
  (or of a phrase of the command it names), within the vocabulary, the mask marks exactly them, the length
  is the model's; encoding is deterministic. The same for a bundle read with a Hugging Face tokenizer.

The examples are generated, but the parts are real: the reference models' io_spec(), a real tokenizer file,
real loopback UDP sockets. No Hypothesis database is written (``database=None``): the runs stay reproducible
from the seed Hypothesis prints on a failure.
"""

from __future__ import annotations

import copy
import json
import math
import re
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from stage_models import manifest as staged_manifest

from vla.runtime.errors import ManifestError, VlaError
from vla.runtime.inputs.commands import CommandEncoder, EncodedCommand, encode_command
from vla.runtime.inputs.ego_input import (
    MAX_ACCEL,
    MAX_SPEED,
    MAX_STEERING,
    MAX_YAW_RATE,
    SCHEMA,
    EgoMessage,
    UdpEgoInput,
    open_ego_input,
    parse_ego_message,
)
from vla.runtime.manifest import DTYPES, Manifest, parse_manifest, parse_manifest_text, with_files

#: Fast, reproducible runs: no example database in the work tree, no deadline on a 2-core machine.
FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
#: Each example opens a real UDP input, whose close() waits for its receiver's poll (0.1 s): fewer examples.
SOCKETS = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

#: Any JSON document Python's json module can write and read back (NaN and ±Infinity included: json.loads
#: accepts them, so a sender can send them).
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)


def one_line(message: str) -> bool:
    return bool(message.strip()) and "\n" not in message and "\r" not in message


# ======================================================================================================
# ego UDP JSON
# ======================================================================================================
EGO_FIELDS = ("speed", "yaw_rate", "accel", "steering")
LIMITS = {"speed": MAX_SPEED, "yaw_rate": MAX_YAW_RATE, "accel": MAX_ACCEL, "steering": MAX_STEERING}
REQUIRED = ("speed", "yaw_rate")


def plausible(field: str) -> st.SearchStrategy[float | int]:
    """Numbers within a field's documented limit, its bounds included, as floats or integers."""
    limit = LIMITS[field]
    return (st.floats(min_value=-limit, max_value=limit, allow_nan=False)
            | st.integers(min_value=-int(limit), max_value=int(limit)))


def implausible(field: str) -> st.SearchStrategy[float | int]:
    """Numbers beyond a field's limit: just beyond it (where an off-by-a-bit limit shows) and far beyond."""
    limit = LIMITS[field]
    near = (st.floats(min_value=limit, max_value=2 * limit, exclude_min=True)
            | st.integers(min_value=int(limit) + 1, max_value=int(2 * limit)))
    far = st.floats(min_value=limit, exclude_min=True) | st.integers(min_value=int(limit) + 1)
    return st.tuples(near | far, st.sampled_from([1, -1])).map(lambda p: p[0] * p[1])


#: JSON values that are not numbers (null excluded: it means "absent" for the optional fields).
NOT_NUMBERS = (st.booleans() | st.text(max_size=8) | st.lists(JSON, max_size=3)
               | st.dictionaries(st.text(max_size=4), JSON, max_size=3))


@st.composite
def valid_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A vla.ego/1 message as the docstring documents it: required fields, optional ones absent or null."""
    msg: dict[str, Any] = {f: draw(plausible(f)) for f in REQUIRED}
    for f in ("accel", "steering"):
        choice = draw(st.sampled_from(["absent", "null", "value"]))
        if choice != "absent":
            msg[f] = None if choice == "null" else draw(plausible(f))
    if draw(st.booleans()):
        msg["seq"] = draw(st.none() | st.integers(min_value=-(2**70), max_value=2**70))
    if draw(st.booleans()):
        msg["schema"] = SCHEMA
    return msg


def field_problems(obj: dict[str, Any]) -> set[str]:
    """The fields of ``obj`` that break the documented message format (an oracle written from the docstring,
    not from the parser): a wrong schema, a required field missing, a field that is not a finite number
    within its limit, a seq that is not an integer. Booleans are not numbers."""
    bad = set()
    if "schema" in obj and obj["schema"] != SCHEMA:
        bad.add("schema")
    for f in EGO_FIELDS:
        if f not in obj or obj[f] is None:
            if f in REQUIRED:
                bad.add(f)
            continue
        v = obj[f]
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        # an int is compared as it is: one too big for a float is implausible, not an OverflowError
        if not number or abs(v) > LIMITS[f] or not math.isfinite(v):
            bad.add(f)
    if obj.get("seq") is not None and (isinstance(obj["seq"], bool) or not isinstance(obj["seq"], int)):
        bad.add("seq")
    return bad


def named_fields(message: str) -> set[str]:
    """The message fields an error names, ignoring the offending value it quotes in parentheses."""
    head = message.split(" (")[0]
    return {f for f in (*EGO_FIELDS, "seq", "schema") if re.search(rf"\b{f}\b", head)}


@st.composite
def ego_objects(draw: st.DrawFn) -> dict[str, Any]:
    """Objects near the format: each field tampered with one time in five (absent, null, implausible,
    non-finite or not a number), the others valid; ``field_problems`` decides what the result must be."""
    tampered = {f for f in (*EGO_FIELDS, "seq", "schema") if draw(st.integers(0, 4)) == 0}
    obj: dict[str, Any] = {}
    for f in EGO_FIELDS:
        if f in tampered:
            kind = draw(st.sampled_from(["absent", "null", "implausible", "nonfinite", "other"]))
        else:
            kind = "valid" if f in REQUIRED else draw(st.sampled_from(["absent", "null", "valid"]))
        if kind == "null":
            obj[f] = None
        elif kind == "valid":
            obj[f] = draw(plausible(f))
        elif kind == "implausible":
            obj[f] = draw(implausible(f))
        elif kind == "nonfinite":
            obj[f] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        elif kind == "other":
            obj[f] = draw(NOT_NUMBERS)
    if "seq" in tampered:
        obj["seq"] = draw(NOT_NUMBERS | st.floats())
    elif draw(st.booleans()):
        obj["seq"] = draw(st.integers())
    if "schema" in tampered:
        obj["schema"] = draw(JSON | st.sampled_from(["vla.ego/2", "VLA.EGO/1", "vla.ego/1 ", ""]))
    elif draw(st.booleans()):
        obj["schema"] = SCHEMA
    obj.update(draw(st.dictionaries(st.text(max_size=6).filter(lambda k: k not in obj), JSON, max_size=2)))
    return obj


def parse_or_error(data: bytes) -> EgoMessage | ValueError:
    """The parser's answer; any exception other than its documented ValueError fails the test as itself."""
    try:
        return parse_ego_message(data)
    except ValueError as exc:
        assert one_line(str(exc)), f"not a one-line reason: {str(exc)!r}"
        return exc


@FAST
@given(st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode())
       | st.text(max_size=80).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_ego_arbitrary_datagrams_give_a_message_or_a_one_line_value_error(data):
    parse_or_error(data)


@FAST
@given(valid_messages())
def test_ego_valid_messages_round_trip_exactly(msg):
    got = parse_ego_message(json.dumps(msg).encode())
    assert got.speed == float(msg["speed"]) and got.yaw_rate == float(msg["yaw_rate"])
    assert got.accel == (0.0 if msg.get("accel") is None else float(msg["accel"]))
    assert got.steering == (None if msg.get("steering") is None else float(msg["steering"]))
    assert got.seq == msg.get("seq")
    assert all(isinstance(x, float) for x in (got.speed, got.yaw_rate, got.accel))


@FAST
@given(ego_objects())
def test_ego_broken_fields_are_refused_and_named(obj):
    bad = field_problems(obj)
    result = parse_or_error(json.dumps(obj).encode())
    event("refused" if bad else "accepted")
    if not bad:
        assert isinstance(result, EgoMessage), f"a valid message was refused: {result}"
        assert result.speed == float(obj["speed"]) and result.yaw_rate == float(obj["yaw_rate"])
        return
    assert isinstance(result, ValueError), f"accepted a message with broken field(s) {bad}: {obj!r}"
    named = named_fields(str(result))
    assert named and named <= bad, f"{str(result)!r} should name one of {sorted(bad)}"


@FAST
@given(valid_messages(), st.sampled_from([*EGO_FIELDS, "seq", "schema"]), st.data())
def test_ego_one_broken_field_is_refused_naming_exactly_it(msg, field, data):
    """A valid message with one field broken: refused, and the reason names that field and no other."""
    if field == "seq":
        msg[field] = data.draw(NOT_NUMBERS | st.floats())
    elif field == "schema":
        msg[field] = data.draw(JSON.filter(lambda v: v != SCHEMA))
    else:
        how = data.draw(st.sampled_from(["implausible", "nonfinite", "not a number"]
                                         + (["absent", "null"] if field in REQUIRED else [])))
        if how == "absent":
            del msg[field]
        else:
            msg[field] = data.draw({"implausible": implausible(field),
                                    "nonfinite": st.sampled_from([math.nan, math.inf, -math.inf]),
                                    "not a number": NOT_NUMBERS, "null": st.none()}[how])
    assume(field_problems(msg) == {field})  # e.g. a float seq of 3.0 is still a float: not an integer
    result = parse_or_error(json.dumps(msg).encode())
    assert isinstance(result, ValueError), f"accepted {msg!r}"
    assert named_fields(str(result)) == {field}, str(result)


@pytest.mark.parametrize("payload", [
    b"[" * 5000,  # nesting beyond the interpreter's recursion limit, well within one datagram
    b'{"speed": ' * 3000 + b"1" + b"}" * 3000,
    b'{"speed": 1, "yaw_rate": [' + b"[" * 20000 + b"]" * 20001 + b"}",
    b'{"speed": ' + b"7" * 5000 + b', "yaw_rate": 0}',  # an integer past Python's 4300-digit conversion limit
    b'{"speed": 1, "yaw_rate": 0, "seq": ' + b"9" * 5000 + b"}",
], ids=["array-5000-deep", "object-3000-deep", "field-20000-deep", "speed-5000-digits", "seq-5000-digits"])
def test_ego_deep_or_huge_json_is_a_value_error(payload):
    with pytest.raises(ValueError) as info:
        parse_ego_message(payload)
    assert one_line(str(info.value)) and "JSON" in str(info.value)


def test_ego_udp_receiver_survives_a_deeply_nested_datagram():
    """The receiver thread lives as long as the input: one hostile datagram must be counted as rejected, not
    end the thread (which would leave the last reading ageing into a permanent 'ego stale')."""
    with open_ego_input("udp://127.0.0.1:0") as inp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        assert isinstance(inp, UdpEgoInput)
        for payload in (b"[" * 60000, b'{"speed": 1.5, "yaw_rate": 0.25, "seq": 7}'):
            before = inp.received
            tx.sendto(payload, ("127.0.0.1", inp.port))
            deadline = time.monotonic() + 5.0
            while inp.received == before and time.monotonic() < deadline:
                time.sleep(0.002)
        reading = inp.latest(time.monotonic())
        assert reading is not None and (reading.speed, reading.yaw_rate) == (1.5, 0.25)
        assert (inp.received, inp.rejected) == (2, 1)  # the thread lived to read the second datagram
        assert "JSON" in (inp.last_error or "")


@st.composite
def datagram_runs(draw: st.DrawFn) -> list[tuple[bytes, float]]:
    """Datagrams (mostly valid, seqs stepping so that reordering and restarts happen) with receipt times."""
    out, t, prev = [], 100.0, 0
    for _ in range(draw(st.integers(1, 12))):
        t += draw(st.sampled_from([0.0, 0.001, 0.01, 0.5, 0.7, 1.0, 1.001, 1.5]))  # restart_after_s is 1.0
        if draw(st.integers(0, 4)) == 0:
            data = draw(st.binary(max_size=40) | JSON.map(lambda v: json.dumps(v).encode()))
        else:
            msg = draw(valid_messages())
            # steps from the seq sent last (mostly the newest accepted): forward, small steps back (reordering)
            # and jumps back around REORDER_WINDOW (1000: a restarted sender)
            step = draw(st.none() | st.sampled_from([1, 2, 0, -1, -5, -999, -1000, -1001, -5000]))
            msg.pop("seq", None)
            if step is not None:
                msg["seq"] = prev = prev + step
            data = json.dumps(msg).encode()
        out.append((data, t))
    return out


def _seqs(*pairs: tuple[int, float]) -> list[tuple[bytes, float]]:
    return [(json.dumps({"speed": 1.0, "yaw_rate": 0.0, "seq": q}).encode(), t) for q, t in pairs]


@SOCKETS
@given(datagram_runs())
@example(_seqs((5, 100.0), (5, 100.001), (6, 100.002)))  # a repeated seq is not newer
@example(_seqs((2000, 100.0), (1000, 100.001), (999, 100.002)))  # exactly REORDER_WINDOW back: not a restart
@example(_seqs((5, 100.0), (4, 101.0), (3, 102.001)))  # exactly restart_after_s after the newest: not a restart
def test_ego_udp_accept_follows_the_documented_ordering_rule(run):
    """``accept`` never raises; it keeps the newest valid reading by the module's seq rule (not newer than the
    newest accepted: rejected, unless the sender evidently restarted); counters add up."""
    inp = UdpEgoInput("udp://127.0.0.1:0", "127.0.0.1", 0, restart_after_s=1.0)
    try:
        newest_seq: int | None = None
        last: tuple[EgoMessage, float] | None = None
        accepted = 0
        for data, t in run:
            parsed = parse_or_error(data)
            expect = isinstance(parsed, EgoMessage)
            if expect and parsed.seq is not None and newest_seq is not None and parsed.seq <= newest_seq:
                restarted = (parsed.seq < newest_seq - UdpEgoInput.REORDER_WINDOW
                             or (last is not None and t - last[1] > 1.0))
                expect = restarted
            assert inp.accept(data, t, "test") is expect
            if expect:
                accepted += 1
                last = (parsed, t)
                newest_seq = parsed.seq if parsed.seq is not None else newest_seq
        reading = inp.latest(time.monotonic())
        if last is None:
            assert reading is None
        else:
            msg, t = last
            assert (reading.speed, reading.accel, reading.yaw_rate, reading.steering, reading.time) == (
                msg.speed, msg.accel, msg.yaw_rate, msg.steering, t)
        assert inp.received == len(run) and inp.rejected == len(run) - accepted
    finally:
        inp.close()


# ======================================================================================================
# manifest
# ======================================================================================================
@pytest.fixture(scope="module")
def base_manifests() -> dict[str, dict[str, Any]]:
    """Real manifests built in-process: reference model 1 (cameras, recurrent state, word vocabulary, nav and
    text), reference model 2 (a controls trajectory) and a two-stage bundle (stages, repeat, intermediates)."""
    from vla.export.reference import build_reference
    from vla.export.reference_v2 import build_reference_v2

    bases = {"reference": build_reference(vit_depth=1, fusion_depth=1, action_depth=1).io_spec(),
             "reference_v2": build_reference_v2().io_spec(),
             "staged": staged_manifest()}
    bases = json.loads(json.dumps(bases))  # as read from a file: no lists shared between tensors (io_spec shares)
    for raw in bases.values():
        parse_manifest(raw)  # the starting points are valid
    return bases


def manifest_or_error(raw: Any) -> Manifest | ManifestError:
    try:
        return parse_manifest(raw)
    except ManifestError as exc:
        assert one_line(str(exc)), f"not one line: {str(exc)!r}"
        assert str(exc).startswith("manifest"), str(exc)
        return exc


def check_usable(m: Manifest) -> None:
    """What the runtime reads from an accepted manifest right after parsing must not crash."""
    names = [t.name for t in m.inputs]
    assert len(set(names)) == len(names)
    assert len(m.outputs_with("trajectory")) == 1
    traj = m.outputs_with("trajectory")[0]
    assert len(traj.shape) == 4 and traj.shape[-1] == len(traj.detail["fields"])
    for stage in m.stages:
        part = m.stage_manifest(stage)
        assert [t.name for t in part.inputs] == list(stage.inputs)
    assert set(m.camera_sizes) == set(m.camera_names)
    _ = m.controls, m.speed_source, m.precision
    encoder = CommandEncoder(m)
    assert encoder.takes_command == bool(m.inputs_with("command") or m.inputs_with("text"))


TOP_KEYS = ("schema_version", "model", "inputs", "outputs", "stages", "intermediates", "vocabulary", "tokenizer",
            "default_command", "tools", "export", "measured")


@FAST
@given(JSON | st.dictionaries(st.sampled_from(TOP_KEYS), JSON | st.just(1), max_size=6))
def test_manifest_arbitrary_json_is_a_manifest_or_one_line_error(raw):
    result = manifest_or_error(raw)
    if isinstance(result, Manifest):
        check_usable(result)


@FAST
@given(st.text(max_size=200) | st.binary(max_size=200) | JSON.map(json.dumps))
def test_manifest_arbitrary_text_is_a_manifest_or_one_line_error_naming_the_origin(text):
    try:
        parse_manifest_text(text, "bundle/manifest.json")
    except ManifestError as exc:
        assert one_line(str(exc)) and str(exc).startswith("bundle/manifest.json: "), str(exc)


@pytest.mark.parametrize("text", [
    "[" * 100_000,
    '{"schema_version": 1, "model": ' * 5000,
    "1" * 5000,  # past Python's int conversion limit
    '{"schema_version": 1, "model": {"name": "x", "parameters": ' + "9" * 5000 + "}}",
], ids=["array-100000-deep", "object-5000-deep", "5000-digits", "parameters-5000-digits"])
def test_manifest_deep_or_huge_json_text_is_a_manifest_error(text):
    with pytest.raises(ManifestError) as info:
        parse_manifest_text(text, "m.json")
    assert one_line(str(info.value)) and str(info.value).startswith("m.json: ")


def test_manifest_deeply_nested_values_inside_a_valid_document_are_a_manifest_error(base_manifests):
    """JSON the parser reads (depth within json's limit) but the schema validator compares recursively."""
    def deep() -> list:
        value: list = []
        for _ in range(900):
            value = [value]
        return value

    raw = copy.deepcopy(base_manifests["reference"])
    raw["inputs"][0]["camera"]["names"] = [deep(), deep()]  # uniqueItems compares the two
    with pytest.raises(ManifestError) as info:
        parse_manifest(raw)
    assert one_line(str(info.value))


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path in a JSON document, the root excluded."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.append((*prefix, k))
        out.extend(paths(v, (*prefix, k)))
    return out


def at(raw: Any, path: tuple) -> Any:
    for k in path:
        raw = raw[k]
    return raw


#: Values a plausible mistake would put in a manifest: wrong dtypes and roles, bad shapes, names of other
#: tensors, numbers at the edges.
def interesting(raw: dict[str, Any]) -> st.SearchStrategy[Any]:
    names = [t["name"] for t in (*raw["inputs"], *raw["outputs"], *raw.get("intermediates", []))]
    roles = ["camera", "state", "ego", "command", "text", "noise", "aux", "trajectory", "score"]
    return (st.sampled_from([*DTYPES, "float64", "", "int"]) | st.sampled_from([*roles, "steering", "Camera"])
            | st.lists(st.integers(-2, 70), max_size=6) | st.sampled_from(names)
            | st.sampled_from([0, -1, 1, 0.5, 1e308, -1e-300, True, None, "", [], {}]) | JSON)


@st.composite
def mutated(draw: st.DrawFn, bases: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any], list[str]]:
    """A real manifest with one to three mutations: a key dropped, a value replaced, a list item repeated or
    removed. Returns the base's name, the document and what was done (for the failure report)."""
    name = draw(st.sampled_from(sorted(bases)))
    raw = copy.deepcopy(bases[name])
    done = []
    for _ in range(draw(st.integers(1, 3))):
        where = paths(raw)
        if not where:
            break
        path = draw(st.sampled_from(where))
        parent, key = at(raw, path[:-1]), path[-1]
        kind = draw(st.sampled_from(["drop", "replace", "replace", "repeat"]))
        if kind == "drop":
            del parent[key]
        elif kind == "replace":
            parent[key] = draw(interesting(bases[name]))
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        else:
            parent[key] = [copy.deepcopy(parent[key])] * 2
        done.append(f"{kind} {list(path)}")
    return name, raw, done


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_manifest_mutations_are_refused_in_one_line_or_accepted_usable(base_manifests, data):
    name, raw, done = data.draw(mutated(base_manifests))
    result = manifest_or_error(raw)
    event("accepted" if isinstance(result, Manifest) else "refused")  # --hypothesis-show-statistics: the mix
    if isinstance(result, Manifest):
        check_usable(result)
    else:
        assert re.match(r"manifest( [^:]+)?: \S", str(result)), f"{name} {done}: {result}"


@FAST
@given(data=st.data())
def test_manifest_a_wrong_dtype_or_role_is_named_where_it_is(base_manifests, data):
    """A dtype outside the schema's list, or a role no tensor kind has, is refused naming that tensor."""
    name = data.draw(st.sampled_from(sorted(base_manifests)))
    raw = copy.deepcopy(base_manifests[name])
    side = data.draw(st.sampled_from(["inputs", "outputs"]))
    i = data.draw(st.integers(0, len(raw[side]) - 1))
    key = data.draw(st.sampled_from(["dtype", "role"]))
    known = DTYPES if key == "dtype" else ("camera", "state", "ego", "command", "text", "noise", "aux",
                                           "trajectory", "score")
    raw[side][i][key] = data.draw(JSON.filter(lambda v: v not in known))
    with pytest.raises(ManifestError) as info:
        parse_manifest(raw)
    assert f"manifest {side}[{i}]" in str(info.value), str(info.value)
    assert one_line(str(info.value))


@FAST
@given(data=st.data())
def test_manifest_a_shape_with_a_non_positive_or_non_integer_dim_is_refused(base_manifests, data):
    name = data.draw(st.sampled_from(sorted(base_manifests)))
    raw = copy.deepcopy(base_manifests[name])
    side = data.draw(st.sampled_from(["inputs", "outputs"]))
    i = data.draw(st.integers(0, len(raw[side]) - 1))
    shape = raw[side][i]["shape"]
    bad = data.draw(st.integers(max_value=0) | st.floats(allow_nan=True) | st.text(max_size=3) | st.none()
                    | st.booleans())
    assume(not (isinstance(bad, float) and bad.is_integer() and bad >= 1))  # 2.0 is an integer to JSON Schema
    shape.insert(data.draw(st.integers(0, len(shape))), bad)
    with pytest.raises(ManifestError) as info:
        parse_manifest(raw)
    assert f"manifest {side}[{i}].shape" in str(info.value), str(info.value)


# ======================================================================================================
# the command channel
# ======================================================================================================
@pytest.fixture(scope="module")
def reference_manifest_obj(base_manifests) -> Manifest:
    return parse_manifest(base_manifests["reference"])


@pytest.fixture(scope="module")
def one_word_manifest(base_manifests) -> Manifest:
    """The reference vocabulary read one word at a time: long commands are replaced by a fitting phrase."""
    raw = copy.deepcopy(base_manifests["reference"])
    for t in raw["inputs"]:
        if t["role"] == "text":
            t["shape"] = [1, 1]
    return parse_manifest(raw)


@pytest.fixture(scope="module")
def nav_only_manifest(base_manifests) -> Manifest:
    raw = copy.deepcopy(base_manifests["reference"])
    raw["inputs"] = [t for t in raw["inputs"] if t["role"] != "text"]
    return parse_manifest(raw)


def command_texts(vocab: dict[str, Any]) -> st.SearchStrategy[str]:
    """Free text (surrogates included: argv decodes undecodable bytes to them), word salad from the vocabulary,
    and the vocabulary's phrases with noise around them."""
    words = st.sampled_from([*vocab["tokens"], "LEFT", "Turn", "please", "now", "'", "-", "42"])
    phrases = st.sampled_from([p for c in vocab["commands"] for p in c["phrases"]])
    seps = st.sampled_from([" ", "  ", ", ", "\t", "\n", "!", " ... "])
    salad = st.lists(st.tuples(words | phrases, seps), max_size=20).map(lambda ws: "".join(w + s for w, s in ws))
    return st.text(st.characters(exclude_categories=()), max_size=40) | salad | phrases


def decoded(enc: EncodedCommand, vocab: dict[str, Any]) -> list[str]:
    return [vocab["tokens"][i] for i in enc.token_ids[enc.mask]]


def words_of(text: str) -> list[str]:
    """Words as a person would split a route command: lower case runs of letters, digits, ' and -."""
    return re.findall(r"[a-z0-9'-]+", text.lower())


def check_word_encoding(enc: EncodedCommand, text: str, vocab: dict[str, Any], length: int) -> None:
    pad = vocab["tokens"].index(vocab["pad"])
    ids, mask = enc.token_ids, enc.mask
    assert ids.dtype == np.int64 and ids.shape == (length,) and mask.dtype == bool and mask.shape == (length,)
    assert ((ids >= 0) & (ids < len(vocab["tokens"]))).all()
    n = int(mask.sum())
    assert n >= 1 and mask[:n].all() and not mask[n:].any(), "the mask marks a prefix of real words"
    assert (ids[~mask] == pad).all() and (ids[mask] != pad).all()
    got = decoded(enc, vocab)
    named = next(c for c in vocab["commands"] if c["id"] == enc.nav_id)
    assert named["name"] == enc.nav_name
    if enc.note is None:
        assert got == words_of(text), "the ids are the text's words, in order"
    else:
        assert got in [words_of(p) for p in named["phrases"]], "a long command becomes a phrase of its command"
        known = set(vocab["tokens"])
        fitting = [w for w in map(words_of, named["phrases"]) if 0 < len(w) <= length and set(w) <= known]
        assert len(got) == max(map(len, fitting)), "the most telling phrase that fits"
        assert one_line(enc.note)

    def found(cmd: dict[str, Any]) -> list[int]:
        """Lengths of the command's phrases found, as whole words, in what the model gets."""
        joined = f" {' '.join(got)} "
        return [len(p) for p in (" ".join(words_of(p)) for p in cmd["phrases"]) if p and f" {p} " in joined]

    assert found(named), "the nav command is in the words"
    assert max(found(named)) == max(n for c in vocab["commands"] for n in found(c)), "the longest phrase found wins"


@FAST
@given(data=st.data())
def test_command_encoder_gives_words_within_the_vocabulary_or_a_vla_error(reference_manifest_obj, one_word_manifest,
                                                                          data):
    m = data.draw(st.sampled_from([reference_manifest_obj, one_word_manifest]))
    vocab = m.vocabulary
    text = data.draw(command_texts(vocab))
    encoder = CommandEncoder(m)
    try:
        enc = encoder.encode(text)
    except VlaError as exc:
        event("refused")
        assert one_line(str(exc))
        return
    event("encoded with a note" if enc.note else "encoded")
    check_word_encoding(enc, text, vocab, m.input("text_ids").shape[-1])
    again, fresh = encoder.encode(text), CommandEncoder(m).encode(text)  # deterministic, no hidden state
    for other in (again, fresh):
        assert (other.nav_id, other.nav_name, other.note) == (enc.nav_id, enc.nav_name, enc.note)
        assert np.array_equal(other.token_ids, enc.token_ids) and np.array_equal(other.mask, enc.mask)


@FAST
@given(data=st.data(), length=st.integers(1, 24))
def test_encode_command_is_exact_or_a_vla_error(reference_manifest_obj, data, length):
    """The word encoder itself: the words as they are (no phrase substitution), any model length."""
    vocab = reference_manifest_obj.vocabulary
    text = data.draw(command_texts(vocab))
    try:
        enc = encode_command(text, vocab, length)
    except VlaError as exc:
        assert one_line(str(exc))
        assert not (0 < len(words_of(text)) <= length and set(words_of(text)) <= set(vocab["tokens"])
                    and any(f" {' '.join(words_of(p))} " in f" {' '.join(words_of(text))} "
                            for c in vocab["commands"] for p in c["phrases"])), f"refused a valid command: {exc}"
        return
    assert enc.note is None
    check_word_encoding(enc, text, vocab, length)


@FAST
@given(data=st.data())
def test_nav_only_model_gets_a_known_command_or_a_vla_error(nav_only_manifest, data):
    vocab = nav_only_manifest.vocabulary
    text = data.draw(command_texts(vocab))
    try:
        enc = CommandEncoder(nav_only_manifest).encode(text)
    except VlaError as exc:
        assert one_line(str(exc))
        return
    assert enc.token_ids.shape == (0,) and enc.mask.shape == (0,)
    assert (enc.nav_id, enc.nav_name) in {(c["id"], c["name"]) for c in vocab["commands"]}


# ---- a bundle read with a Hugging Face tokenizer ------------------------------------------------------
TOKENIZER_TEXT_LEN = 8
SENTENCES = ["turn left at the next intersection", "turn right at the next intersection", "go straight",
             "follow the road", "stop at the light", "change lane to the left", "take the exit"]


@pytest.fixture(scope="module")
def tokenizer_manifest(tmp_path_factory) -> Manifest:
    """A BERT-style WordPiece tokenizer trained here ([CLS] text [SEP], [PAD] 0) in a bundle folder, and the
    manifest of a model that reads its text with it (as ``vla-export --tokenizer`` writes it)."""
    tokenizers = pytest.importorskip("tokenizers")
    from vla.runtime.inputs.text import describe_file

    folder = tmp_path_factory.mktemp("tokenizer_bundle")
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(SENTENCES * 5, tokenizers.trainers.WordPieceTrainer(
        vocab_size=100, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                                                 ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.save(str(folder / "tokenizer.json"))
    raw = copy.deepcopy(staged_manifest())
    for key in ("stages", "intermediates"):
        raw.pop(key)
    raw["model"]["name"] = "tokenized-text"
    raw["default_command"] = "follow the road"
    raw["inputs"] += [{"name": "text_ids", "dtype": "int64", "role": "text", "shape": [1, TOKENIZER_TEXT_LEN],
                       "text": {"kind": "ids"}},
                      {"name": "text_mask", "dtype": "int64", "role": "text", "shape": [1, TOKENIZER_TEXT_LEN],
                       "text": {"kind": "mask"}}]
    raw["tokenizer"] = describe_file(folder / "tokenizer.json")
    return with_files(parse_manifest(raw), folder)


@FAST
@given(text=st.text(max_size=60) | st.sampled_from(SENTENCES).map(lambda s: f"  {s.upper()}, please! "))
def test_tokenizer_model_gives_ids_within_the_tokenizer_or_a_vla_error(tokenizer_manifest, text):
    block = tokenizer_manifest.tokenizer
    try:
        enc = CommandEncoder(tokenizer_manifest).encode(text)
    except VlaError as exc:
        assert one_line(str(exc))
        return
    ids, mask = enc.token_ids, enc.mask
    assert ids.shape == mask.shape == (TOKENIZER_TEXT_LEN,) and ids.dtype == np.int64 and mask.dtype == bool
    assert ((ids >= 0) & (ids < block["vocab_size"])).all()
    n = int(mask.sum())
    assert n >= 2 and mask[:n].all() and not mask[n:].any(), "[CLS] ... [SEP], then padding"
    assert (ids[~mask] == block["pad_id"]).all()
    assert enc.nav_id == -1  # the model has no nav input
    assert enc.note is None or one_line(enc.note)
    again = CommandEncoder(tokenizer_manifest).encode(text)
    assert np.array_equal(again.token_ids, ids) and np.array_equal(again.mask, mask) and again.note == enc.note


@pytest.mark.parametrize("text", ["turn left \udcff", "\ud800"])
def test_tokenizer_model_refuses_undecodable_text_in_one_line(tokenizer_manifest, text):
    try:
        CommandEncoder(tokenizer_manifest).encode(text)
    except VlaError as exc:
        assert one_line(str(exc))


def test_the_fixtures_are_real(tokenizer_manifest, reference_manifest_obj):
    """Guard against a vacuous suite: the parsers accept the real inputs the properties start from."""
    assert parse_ego_message(b'{"speed": 3, "yaw_rate": 0.5}') == EgoMessage(3.0, 0.0, 0.5, None, None)
    enc = CommandEncoder(reference_manifest_obj).encode("Turn LEFT at the next intersection")
    assert (enc.nav_name, int(enc.mask.sum())) == ("left", 6)
    tok_enc = CommandEncoder(tokenizer_manifest).encode("turn left")
    assert isinstance(tok_enc.token_ids, np.ndarray) and int(tok_enc.mask.sum()) == 4  # [CLS] turn left [SEP]
    assert isinstance(tokenizer_manifest.tokenizer_file, Path) and tokenizer_manifest.tokenizer_file.is_file()
