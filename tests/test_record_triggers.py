"""--record-on's decisions: the trigger grammar and edges, the ring of the last seconds, the snippet plan,
and the disk budget's rotation (pure functions; the rotation's listing and deletions use real files)."""

from __future__ import annotations

import os
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vla.runtime.errors import VlaError
from vla.runtime.record.format import Message
from vla.runtime.record.ring import MAX_REASONS, NS, Ring, Snippets
from vla.runtime.record.rotation import (
    is_snippet,
    parse_size,
    plan_rotation,
    scan_recordings,
    slug,
    snippet_name,
)
from vla.runtime.record.triggers import (
    GRAMMAR,
    Trigger,
    TriggerState,
    manual_reason,
    next_trigger,
    parse_triggers,
)


# ---- the grammar -----------------------------------------------------------------------------------
def test_every_item_of_the_grammar_parses_in_order():
    got = parse_triggers("fault,fallback,late,late-streak:3,surprise>0.3,disagreement>1.5,manual")
    assert got == (Trigger("fault"), Trigger("fallback"), Trigger("late"), Trigger("late-streak", 3),
                   Trigger("surprise", 0.3), Trigger("disagreement", 1.5), Trigger("manual"))
    assert isinstance(got[3].value, int)


def test_spaces_and_case_are_forgiven_and_repeats_kept_once():
    got = parse_triggers(" Fault , late-streak : 2,surprise > .5, fault,surprise>0.5 ")
    assert got == (Trigger("fault"), Trigger("late-streak", 2), Trigger("surprise", 0.5))


def test_two_thresholds_of_one_kind_are_two_triggers():
    assert parse_triggers("surprise>0.3,surprise>0.6") == (Trigger("surprise", 0.3), Trigger("surprise", 0.6))


@pytest.mark.parametrize("spec, named", [
    ("", "no trigger"),
    ("   ", "no trigger"),
    ("fault,,late", "empty item"),
    ("fault,", "empty item"),
    ("faults", "'faults'"),
    ("late-streak", "'late-streak'"),
    ("late-streak:0", "N >= 1"),
    ("late-streak:-2", "'late-streak:-2'"),
    ("late-streak:1.5", "'late-streak:1.5'"),
    ("surprise", "'surprise'"),
    ("surprise>", "'surprise>'"),
    ("surprise<0.3", "'surprise<0.3'"),
    ("surprise>nan", "'surprise>nan'"),
    ("surprise>inf", "'surprise>inf'"),
    ("disagreement>1e999", "finite"),
    ("manual:now", "'manual:now'"),
])
def test_a_bad_spec_is_one_line_naming_the_item_and_the_grammar(spec, named):
    with pytest.raises(VlaError) as err:
        parse_triggers(spec)
    msg = str(err.value)
    assert "\n" not in msg
    assert named in msg
    assert GRAMMAR in msg


def test_a_long_bad_item_is_shortened_and_stays_one_line():
    with pytest.raises(VlaError) as err:
        parse_triggers("fault,bogus\n" + "x" * 500)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 200 and "bogus" in msg


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_parse_triggers_raises_nothing_but_vla_error(spec):
    try:
        got = parse_triggers(spec)
    except VlaError as exc:
        assert "\n" not in str(exc)
    else:
        assert got and all(isinstance(t, Trigger) for t in got)


_ITEMS = st.one_of(
    st.sampled_from(["fault", "fallback", "late", "manual"]).map(Trigger),
    st.integers(1, 10**6).map(lambda n: Trigger("late-streak", n)),
    st.tuples(st.sampled_from(["surprise", "disagreement"]),
              st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)).map(lambda kv: Trigger(*kv)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_ITEMS, min_size=1, max_size=8))
def test_the_written_form_of_triggers_parses_back(triggers):
    expected = tuple(dict.fromkeys(triggers))
    assert parse_triggers(",".join(str(t) for t in triggers)) == expected


# ---- the decision ----------------------------------------------------------------------------------
def _rec(status="ok", event=None, reason=None, surprise=None, shadow=None):
    return {"status": status, "event": event, "reason": reason, "surprise": surprise, "shadow": shadow}


def _run(spec, records, state=None):
    triggers = parse_triggers(spec)
    state = state or TriggerState()
    fired = []
    for r in records:
        state, why = next_trigger(state, triggers, r)
        fired.append(why)
    return fired, state


def test_fault_fires_once_when_the_fault_starts_with_its_reason():
    cause = "5 fallbacks in a row (last: engine overrun)"
    records = [_rec(), _rec("fallback", reason="engine overrun"),
               _rec("fault", "fault", cause), _rec("fault", None, cause), _rec("fault", None, cause),
               _rec("ok", "recovered after 0.3 s"), _rec(),
               _rec("fault", "fault", "camera 'front' stalled for 1200 ms (> 1000 ms)")]
    fired, state = _run("fault", records)
    assert fired == [None, None, f"fault: {cause}", None, None, None, None,
                     "fault: camera 'front' stalled for 1200 ms (> 1000 ms)"]
    assert state.faulted


def test_a_faulted_first_tick_fires_even_without_an_event():
    fired, _ = _run("fault", [_rec("fault", None, "stalled"), _rec("fault", None, "stalled")])
    assert fired == ["fault: stalled", None]


def test_a_fault_event_s_own_text_is_used_when_the_record_has_no_reason():
    fired, _ = _run("fault", [_rec("fault", "fault: camera gone", None)])
    assert fired == ["fault: camera gone"]


def test_fallback_fires_on_the_edge_after_an_ok_tick_only():
    records = [_rec("fallback", reason="warming up"),          # no ok tick yet: start-up is not an event
               _rec(), _rec("fallback", reason="engine overrun"), _rec("fallback", reason="engine overrun"),
               _rec(), _rec("late", reason="late: 130 ms"), _rec("fallback", reason="ego stale"),
               _rec(), _rec("fault", "fault", "x"), _rec("fallback", reason="after the fault"),
               _rec(), _rec("fallback", reason="again")]
    fired, _ = _run("fallback", records)
    assert fired == [None, None, "fallback: engine overrun", None, None, None, "fallback: ego stale",
                     None, None, None, None, "fallback: again"]


def test_late_fires_on_the_first_late_tick_of_each_streak_without_saying_late_twice():
    records = [_rec("late", reason="late: published 130 ms after capture"), _rec("late", reason="late: 120 ms"),
               _rec(), _rec("late", reason="late: 140 ms")]
    fired, _ = _run("late", records)
    assert fired == ["late: published 130 ms after capture", None, None, "late: 140 ms"]


def test_late_streak_fires_on_the_nth_late_tick_once_per_streak():
    s = ["late", "late", "late", "late", "late", "ok", "late", "late", "fallback", "late", "late", "late"]
    fired, state = _run("late-streak:3", [_rec(x, reason="late: x" if x == "late" else None) for x in s])
    hits = [i for i, f in enumerate(fired) if f]
    assert hits == [2, 11]
    assert fired[2] == "late-streak: 3 late ticks"
    assert state.late_run == 3


def test_surprise_fires_on_crossing_above_and_rearms_at_or_below():
    values = [0.1, 0.3, 0.41, 0.5, None, 0.6, 0.3, 0.29, 0.35, float("nan"), 0.2, 0.9]
    fired, _ = _run("surprise>0.3", [_rec(surprise=v) for v in values])
    assert fired == [None, None, "surprise 0.41 > 0.3", None, None, None, None, None, "surprise 0.35 > 0.3", None,
                     None, "surprise 0.9 > 0.3"]


def test_disagreement_reads_the_shadow_s_ade_and_ignores_ticks_without_a_shadow_run():
    shadows = [{"ade_m": 0.4}, None, {"ade_m": 1.2}, None, {}, {"ade_m": None}, {"ade_m": 1.4},
               {"ade_m": 0.9}, {"ade_m": 1.05}, "garbage", {"ade_m": "1.3"}]
    fired, _ = _run("disagreement>1.0", [_rec(shadow=s) for s in shadows])
    assert fired == [None, None, "disagreement 1.2 m > 1", None, None, None, None, None,
                     "disagreement 1.05 m > 1", None, None]


def test_two_thresholds_of_one_kind_keep_separate_edges():
    fired, _ = _run("surprise>0.3,surprise>0.6", [_rec(surprise=v) for v in (0.4, 0.7, 0.5, 0.7)])
    assert fired == ["surprise 0.4 > 0.3", "surprise 0.7 > 0.6", None, "surprise 0.7 > 0.6"]


def test_several_triggers_on_one_tick_join_their_reasons_in_the_order_given():
    state = TriggerState(fallback_armed=True, late_run=0)
    fired, _ = _run("surprise>0.5,fault,disagreement>1",
                    [_rec("fault", "fault", "stalled", surprise=0.8, shadow={"ade_m": 2.0})], state)
    assert fired == ["surprise 0.8 > 0.5; fault: stalled; disagreement 2 m > 1"]


def test_manual_never_fires_from_records_and_unlisted_kinds_never_fire():
    records = [_rec(), _rec("fallback", reason="r"), _rec("fault", "fault", "f"), _rec("late", reason="late: l"),
               _rec(surprise=99.0, shadow={"ade_m": 99.0})]
    fired, _ = _run("manual", records)
    assert fired == [None] * len(records)
    assert manual_reason() == "manual"
    assert manual_reason("operator\nsaw  it") == "manual: operator saw it"


def test_the_state_is_immutable_and_the_input_state_is_untouched():
    state = TriggerState()
    triggers = parse_triggers("surprise>0.1,late")
    new, _ = next_trigger(state, triggers, _rec("late", surprise=1.0))
    assert state == TriggerState() and new != state
    with pytest.raises(AttributeError):
        new.late_run = 5  # type: ignore[misc]


_STATUSES = st.sampled_from(["ok", "late", "fallback", "fault"])
_RECORDS = st.builds(_rec, _STATUSES, st.sampled_from([None, "fault", "recovered after 1.0 s"]),
                     st.sampled_from([None, "why"]), st.one_of(st.none(), st.floats(allow_nan=True)),
                     st.one_of(st.none(), st.fixed_dictionaries({"ade_m": st.floats(0, 10)})))


@settings(max_examples=150, deadline=None)
@given(st.lists(_RECORDS, max_size=60))
def test_edges_never_fire_twice_in_a_row_for_the_same_level(records):
    triggers = parse_triggers("fault,fallback,late-streak:2,surprise>0.5,disagreement>1")
    state = TriggerState()
    prev_fired: set[str] = set()
    for r in records:
        state, why = next_trigger(state, triggers, r)
        kinds = {part.split(":")[0].split(" ")[0] for part in why.split("; ")} if why else set()
        # A fallback needs an ok tick between two firings, which cannot happen on consecutive ticks.
        assert "fallback" not in (kinds & prev_fired)
        if "late-streak" in kinds:
            assert state.late_run == 2
        prev_fired = kinds


# ---- the ring ---------------------------------------------------------------------------------------
def _msg(t: int, n: int = 10) -> Message:
    return Message("/tick", t, b"x" * n, "json")


def test_the_ring_keeps_the_last_seconds_oldest_first_and_drain_empties_it():
    ring = Ring(2.0)
    for i in range(50):  # 10 Hz for 5 s
        ring.push(i * NS // 10, _msg(i * NS // 10))
    held = ring.drain()
    times = [t for t, _ in held]
    assert times == sorted(times)
    assert times[0] == 49 * NS // 10 - 2 * NS and times[-1] == 49 * NS // 10
    assert len(held) == 21 and all(m.time_ns == t for t, m in held)
    assert len(ring) == 0 and ring.bytes == 0 and ring.expired == 29
    assert ring.drain() == []


def test_the_window_s_edge_is_kept_and_one_ns_past_it_is_not():
    ring = Ring(1.0)
    ring.push(0, "edge")
    ring.push(NS, "now")
    assert len(ring) == 2
    ring.push(NS + 1, "later")
    assert [item for _, item in ring.drain()] == ["now", "later"]


def test_the_ring_counts_bytes_and_its_cap_drops_the_oldest_first():
    ring = Ring(60.0, max_bytes=100)
    for i in range(12):
        ring.push(i, _msg(i, 10 + i))
    assert ring.bytes <= 100
    kept = [t for t, _ in ring.drain()]
    assert kept == list(range(kept[0], 12))
    assert ring.dropped == kept[0] and ring.dropped_bytes == sum(10 + i for i in range(kept[0]))


def test_an_item_larger_than_the_cap_is_dropped_itself():
    ring = Ring(60.0, max_bytes=50)
    ring.push(1, _msg(1, 20))
    ring.push(2, _msg(2, 80))
    assert len(ring) == 0 and ring.bytes == 0 and ring.dropped == 2


def test_items_without_data_count_no_bytes_and_bytes_count_their_length():
    ring = Ring(1.0, max_bytes=5)
    ring.push(1, {"a": 1})
    ring.push(2, b"abc")
    assert ring.bytes == 3 and len(ring) == 2


def test_a_late_arrival_is_put_in_its_place_or_expired_if_outside_the_window():
    ring = Ring(1.0)
    for t in (0, 2 * NS // 10, 5 * NS // 10, 9 * NS // 10):
        ring.push(t, str(t))
    ring.push(3 * NS // 10, "late")
    ring.push(15 * NS // 10, "newest")  # window now from 0.5 s
    ring.push(4 * NS // 10, "too late")
    assert [item for _, item in ring.drain()] == [str(5 * NS // 10), str(9 * NS // 10), "newest"]
    assert ring.expired == 4


def test_drain_with_now_forgets_what_a_quiet_spell_left_behind():
    ring = Ring(2.0)
    ring.push(0, "old")
    ring.push(1 * NS, "recent")
    assert [item for _, item in ring.drain(now_ns=int(2.5 * NS))] == ["recent"]


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "2"])
def test_a_bad_window_is_a_one_line_error(bad):
    with pytest.raises(VlaError, match="seconds"):
        Ring(bad)
    with pytest.raises(VlaError):
        Snippets(bad, 1.0)


def test_a_bad_byte_cap_is_a_one_line_error():
    with pytest.raises(VlaError, match="byte cap"):
        Ring(1.0, max_bytes=-1)


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 5), st.one_of(st.none(), st.integers(0, 400)),
       st.lists(st.tuples(st.integers(0, 10 * NS), st.integers(0, 120)), max_size=80))
def test_the_ring_never_holds_what_is_outside_its_window_or_over_its_cap(seconds, cap, pushes):
    ring = Ring(seconds, max_bytes=cap)
    newest = None
    for i, (t, n) in enumerate(pushes):
        ring.push(t, _msg(t, n))
        newest = t if newest is None else max(newest, t)
        held = list(ring._items)
        assert all(ht >= newest - ring.window_ns for ht, _, _ in held)
        assert [ht for ht, _, _ in held] == sorted(ht for ht, _, _ in held)
        assert ring.bytes == sum(len(m.data) for _, m, _ in held)
        if cap is not None:
            assert ring.bytes <= cap
        assert len(held) + ring.expired + ring.dropped == i + 1  # nothing lost uncounted
    assert len(ring) + ring.expired + ring.dropped == len(pushes)


# ---- the snippet plan -------------------------------------------------------------------------------
def test_a_trigger_opens_a_snippet_from_pre_before_to_post_after():
    plan = Snippets(pre_s=5, post_s=3)
    assert plan.state(0).open is False and not plan.should_close(0)
    assert plan.trigger(10 * NS, "fault: stalled") is True
    cur = plan.current
    assert (cur.start_ns, cur.end_ns, cur.reasons) == (5 * NS, 13 * NS, ("fault: stalled",))
    s = plan.state(12 * NS)
    assert s.open and s.end_ns == 13 * NS and s.remaining_ns == NS
    assert not plan.should_close(13 * NS - 1) and plan.should_close(13 * NS)
    assert plan.state(20 * NS).remaining_ns == 0
    done = plan.close()
    assert done == cur and plan.current is None and not plan.state(14 * NS).open
    assert plan.trigger(14 * NS, "manual") is True  # after the close: a new file


def test_overlapping_triggers_make_one_snippet_listing_both():
    plan = Snippets(pre_s=2, post_s=3)
    assert plan.trigger(10 * NS, "fault: a") is True
    assert plan.trigger(12 * NS, "surprise 0.4 > 0.3") is False
    assert plan.trigger(11 * NS, "fault: a") is False  # a repeat reason is counted, not listed twice
    cur = plan.current
    assert cur.reasons == ("fault: a", "surprise 0.4 > 0.3") and cur.triggers == 3
    assert (cur.start_ns, cur.end_ns) == (8 * NS, 15 * NS)
    assert not plan.should_close(14 * NS) and plan.should_close(15 * NS)


def test_a_trigger_storm_is_bounded_by_max_s_and_lists_at_most_max_reasons():
    plan = Snippets(pre_s=1, post_s=2, max_s=10)
    for i in range(100):  # a trigger every 0.5 s for 50 s, each with a new reason
        plan.trigger(i * NS // 2, f"surprise {i} > 0")
    cur = plan.current
    assert (cur.start_ns, cur.end_ns) == (-NS, 9 * NS)  # 10 s from the first trigger's pre-roll
    assert cur.reasons == tuple(f"surprise {i} > 0" for i in range(MAX_REASONS)) and cur.triggers == 100
    assert not plan.should_close(9 * NS - 1) and plan.should_close(9 * NS)


def test_max_s_must_hold_pre_and_post():
    with pytest.raises(VlaError, match="longest"):
        Snippets(5, 5, max_s=8)


# ---- the disk budget ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text, size", [
    ("123", 123), ("0", 0), ("100k", 100 * 1024), ("100K", 100 * 1024), ("500M", 500 << 20), ("2G", 2 << 30),
    ("1.5G", 3 << 29), ("1T", 1 << 40), ("500MB", 500 << 20), ("500MiB", 500 << 20), (" 2 g ", 2 << 30),
    ("64b", 64), (".5k", 512),
])
def test_parse_size_reads_bytes_with_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1", "1e3", "inf", "nan", "5X", "1 000", "1,5G", "2GG", "0x10",
                                  "5ib", "٣"])
def test_parse_size_rejects_anything_else_in_one_line(text):
    with pytest.raises(VlaError, match="not a size") as err:
        parse_size(text)
    assert "\n" not in str(err.value)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_size_raises_nothing_but_vla_error(text):
    try:
        assert parse_size(text) >= 0
    except VlaError as exc:
        assert "\n" not in str(exc)


def test_snippet_names_sort_by_time_and_say_why():
    when = datetime(2026, 12, 4, 15, 30, 0)
    assert snippet_name("rec", when, "fault") == "rec-20261204-153000-fault.mcap"
    name = snippet_name("rec", when, "fault: camera 'front' stalled for 1200 ms (> 1000 ms)")
    assert name.startswith("rec-20261204-153000-fault-camera-front-") and name.endswith(".mcap")
    assert is_snippet(name, "rec") and not is_snippet(name, "re")
    assert snippet_name("rec", when, "surprise 0.41 > 0.3") == "rec-20261204-153000-surprise-0-41-0-3.mcap"
    assert snippet_name("rec", when, "?!") == "rec-20261204-153000-trigger.mcap"
    later = snippet_name("rec", datetime(2026, 12, 4, 15, 30, 1), "a")
    assert sorted([later, name]) == [name, later]


@given(st.text())
def test_slugs_are_short_file_safe_and_never_empty(reason):
    s = slug(reason)
    assert 0 < len(s) <= 40
    assert set(s) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert not s.startswith("-") and not s.endswith("-") and "--" not in s


def test_plan_rotation_deletes_the_oldest_until_the_new_file_fits():
    files = [("c", 300, 3.0), ("a", 300, 1.0), ("b", 300, 2.0), ("d", 300, 4.0)]
    assert plan_rotation(files, budget_bytes=1000) == ["a"]
    assert plan_rotation(files, budget_bytes=1000, incoming=300) == ["a", "b"]
    assert plan_rotation(files, budget_bytes=1200) == []
    assert plan_rotation(files, budget_bytes=1000, keep={"a"}) == ["b"]
    assert plan_rotation(files, budget_bytes=0, keep={"d"}) == ["a", "b", "c"]  # best it can do
    assert plan_rotation([("x", 10, 1.0), ("x", 10, 1.0)], budget_bytes=10) == []  # one file, listed twice


def test_plan_rotation_breaks_mtime_ties_by_path_and_rejects_a_negative_budget():
    files = [("z", 10, 1.0), ("m", 10, 1.0), ("a", 10, 1.0)]
    assert plan_rotation(files, budget_bytes=10) == ["a", "m"]
    with pytest.raises(VlaError):
        plan_rotation(files, budget_bytes=-1)


_FILES = st.lists(st.tuples(st.integers(0, 30).map(lambda i: f"f{i}"), st.integers(0, 1000),
                            st.floats(0, 1e6, allow_nan=False)), max_size=25, unique_by=lambda f: f[0])


@settings(max_examples=300, deadline=None)
@given(_FILES, st.integers(0, 10_000), st.integers(0, 2_000), st.sets(st.integers(0, 30).map(lambda i: f"f{i}")))
def test_plan_rotation_properties(files, budget, incoming, keep):
    doomed = plan_rotation(files, budget, incoming, keep)
    by_path = {p: (size, mtime) for p, size, mtime in files}
    assert not set(doomed) & set(keep)
    assert len(doomed) == len(set(doomed)) and set(doomed) <= set(by_path)
    left = incoming + sum(size for p, (size, _) in by_path.items() if p not in doomed)
    deletable = [p for p in by_path if p not in keep]
    floor = incoming + sum(by_path[p][0] for p in keep if p in by_path)
    if floor <= budget:
        assert left <= budget  # fits whenever it can
    else:
        assert sorted(doomed) == sorted(deletable)  # cannot fit: everything allowed goes
    # Oldest first, and nothing younger goes while an older deletable file stays.
    order = sorted(deletable, key=lambda p: (by_path[p][1], p))
    assert doomed == order[:len(doomed)]
    # Minimal: the last deletion was needed.
    if doomed:
        assert left + by_path[doomed[-1]][0] > budget


def test_scan_and_rotate_real_files_touch_only_this_recorder_s_snippets(tmp_path):
    when = datetime(2026, 1, 2, 3, 4, 5)
    ours = []
    for i, reason in enumerate(["fault", "late-streak: 3 late ticks", "manual"]):
        p = tmp_path / snippet_name("rec", when.replace(second=i), reason)
        p.write_bytes(b"m" * 400)
        os.utime(p, (1000.0 + i, 1000.0 + i))
        ours.append(str(p))
    for other in ["notes.txt", "rec.mcap", "other-20260102-030405-fault.mcap", "rec-2026-fault.mcap"]:
        (tmp_path / other).write_bytes(b"o" * 4000)
    (tmp_path / snippet_name("rec", when.replace(second=9), "dir")).mkdir()
    (tmp_path / snippet_name("rec", when.replace(second=8), "link")).symlink_to(tmp_path / "notes.txt")

    listed = scan_recordings(tmp_path, "rec")
    assert sorted(p for p, _, _ in listed) == sorted(ours)
    assert all(size == 400 for _, size, _ in listed)
    doomed = plan_rotation(listed, budget_bytes=1000, incoming=300, keep={ours[2]})
    assert doomed == ours[:2]
    for p in doomed:
        os.remove(p)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(ours[2]), "notes.txt", "rec.mcap", "other-20260102-030405-fault.mcap",
         "rec-2026-fault.mcap", snippet_name("rec", when.replace(second=9), "dir"),
         snippet_name("rec", when.replace(second=8), "link")])
    assert scan_recordings(tmp_path / "missing", "rec") == []
