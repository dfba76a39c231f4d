"""Fleet replay (issue 19): ``vla-replay LOGS_DIR --engine BUNDLE [--ray]``.

Real logs recorded by real ``vla-run`` processes with the tiny bundle, a file of random bytes beside
them, replayed in this process and on an embedded local Ray with two actors; the tables read back
with pyarrow and csv. The summary's decisions (statuses, exit codes, the worst output) are tested as
the pure functions they are.
"""

from __future__ import annotations

import csv
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import VLA_RUN, assert_one_line_error, run_cli
from vla.runtime.replay import cli
from vla.runtime.replay.fleet import COLUMNS, ReplayOptions, closeness, log_status, replay_here, report_rows, summarize

VLA_REPLAY = [sys.executable, "-m", "vla.runtime.replay.cli"]
GOOD = ("log-1.mcap", "log-2.mcap", "log-3.mcap")
CORRUPT = "corrupt.mcap"  # sorts first: the one-line error must name it


@pytest.fixture(scope="module")
def fleet(tiny_bundle, tmp_path_factory) -> Path:
    """Three 10-tick logs of the tiny bundle (recorded at once, one process each) and a corrupt file."""
    folder = tmp_path_factory.mktemp("fleet")
    procs = [subprocess.Popen([*VLA_RUN, "--engine", str(tiny_bundle), "--camera", f"synthetic://?seed={i}",
                               "--frames", "10", "--record", str(folder / name)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i, name in enumerate(GOOD, 1)]
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err
    (folder / CORRUPT).write_bytes(random.Random(19).randbytes(4096))
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return list(reader)


def by_log(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["log"], []).append(r)
    return out


def check_fleet_rows(rows: list[dict]) -> None:
    """3 logs replayed bit-exact with their own bundle (every output ok, zero difference), 1 error row."""
    logs = by_log(rows)
    assert sorted(logs) == sorted([*GOOD, CORRUPT])
    for name in GOOD:
        assert len(logs[name]) >= 3, logs[name]  # one row per output (+ the decoded trajectory)
        for r in logs[name]:
            assert r["status"] == "ok" and float(r["max_abs"]) == 0.0 and int(r["bad_values"]) == 0, r
            assert int(r["runs"]) > 0 and not r["error"], r
    (bad,) = logs[CORRUPT]
    assert bad["status"] == "error" and "not an MCAP recording" in bad["error"], bad
    assert not bad["output"] and "\n" not in bad["error"]


def test_fleet_in_process(fleet, tiny_bundle):
    proc = run_cli(VLA_REPLAY, fleet, "--engine", tiny_bundle)
    line = assert_one_line_error(proc, CORRUPT, "1 of 4 logs could not be replayed", "not an MCAP recording")
    assert proc.returncode == 2, proc.stderr
    assert line.startswith("vla-replay: error:")
    assert "4 logs replayed in this process" in proc.stderr and "3 ok, 0 regression, 1 failed" in proc.stderr
    assert "bit-exact" in proc.stderr
    check_fleet_rows(read_csv(fleet / "replay.csv"))  # the default table: LOG_DIR/replay.csv


def test_fleet_on_ray(fleet, tiny_bundle, tmp_path):
    """Ray Data, an embedded local Ray, two actors: the same rows as in this process, as Parquet."""
    import pyarrow.parquet as pq

    out = tmp_path / "fleet.parquet"
    proc = run_cli(VLA_REPLAY, fleet, "--engine", tiny_bundle, "--ray", "--workers", "2", "--out", out)
    assert_one_line_error(proc, CORRUPT, "1 of 4 logs")
    assert proc.returncode == 2, proc.stderr
    assert "on Ray (2 workers, embedded" in proc.stderr, proc.stderr
    table = pq.read_table(out)
    assert tuple(table.column_names) == COLUMNS
    rows = table.to_pylist()
    check_fleet_rows(rows)
    assert [r["log"] for r in rows] == sorted(r["log"] for r in rows)  # in log order, as listed
    here = replay_here(sorted(fleet.glob("*.mcap")), ReplayOptions(str(tiny_bundle)))

    def key(r: dict) -> tuple:
        return tuple(r[c] for c in COLUMNS if c not in ("seconds", "error"))

    assert [key(r) for r in rows] == [key(r) for r in here]


def test_fleet_regression_exits_1(fleet, tiny_bundle, tmp_path):
    """A bundle with one weight changed: every log regresses; the first difference is named."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    changed = tmp_path / "changed"
    shutil.copytree(tiny_bundle, changed)
    model = onnx.load(str(changed / "model.onnx"))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:  # every weight matrix moved a little: the outputs must move
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.size > 100:
            noisy = w + np.float32(0.05) * rng.standard_normal(w.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    onnx.save(model, str(changed / "model.onnx"))
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in GOOD:
        shutil.copy(fleet / name, logs / name)
    proc = run_cli(VLA_REPLAY, logs, "--engine", changed, "--out", tmp_path / "t.csv")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr, proc.stderr
    assert "REGRESSION: 3 of 3 logs beyond tolerance; first: log-1.mcap" in proc.stderr, proc.stderr
    rows = read_csv(tmp_path / "t.csv")
    assert {log_status_ for log_status_ in log_status(rows).values()} == {"regression"}
    bad = [r for r in rows if r["status"] == "regression"]
    assert all(int(r["bad_values"]) > 0 and r["first_bad_tick"] != "" for r in bad)
    assert all(float(r["max_abs"]) > float(r["tol"]) for r in bad)


def test_truncated_log_is_a_row_unless_salvaged(fleet, tiny_bundle, tmp_path, capsys):
    """A log cut short (a killed recorder) is its own error row; --salvage replays its complete part."""
    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(fleet / "log-1.mcap", logs / "a.mcap")
    data = (fleet / "log-2.mcap").read_bytes()
    (logs / "b.mcap").write_bytes(data[: len(data) * 2 // 3])
    assert cli.main([str(logs), "--engine", str(tiny_bundle)]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 logs could not be replayed; first: b.mcap: truncated recording" in err, err
    rows = by_log(read_csv(logs / "replay.csv"))
    assert {r["status"] for r in rows["a.mcap"]} == {"ok"} and rows["b.mcap"][0]["status"] == "error"
    assert cli.main([str(logs), "--engine", str(tiny_bundle), "--salvage"]) == 0
    rows = by_log(read_csv(logs / "replay.csv"))
    assert {r["status"] for r in rows["b.mcap"]} == {"ok"}
    assert sum(int(r["runs"]) for r in rows["b.mcap"]) < sum(int(r["runs"]) for r in rows["a.mcap"])


@pytest.mark.parametrize("args, needle", [
    ([], "give --engine BUNDLE"),
    (["--engine", "no/such/bundle"], "no such file or bundle folder"),
    (["--engine", "{bundle}", "--out", "x.json"], "the table is .parquet or .csv"),
    (["--engine", "{bundle}", "--tol", "abc"], "--tol abc"),
    (["--engine", "{bundle}", "--update", "new.mcap"], "--update writes one new reference log"),
    (["--engine", "{bundle}", "--ray", "127.0.0.1:9"], "no Ray head answers there"),  # nothing listens on 9
    (["--engine", "{bundle}", "--workers", "0"], "--workers 0: at least 1"),
    (["--engine", "{fleet}"], "folder has no model.onnx"),  # a folder that is no bundle: said once, not per log
])
def test_bad_command_is_one_line(fleet, tiny_bundle, capsys, args, needle):
    argv = [str(fleet), *(a.replace("{bundle}", str(tiny_bundle)).replace("{fleet}", str(fleet)) for a in args)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vla-replay: error:") and needle in err[0], err


def test_folder_without_logs(tmp_path, tiny_bundle):
    proc = run_cli(VLA_REPLAY, tmp_path, "--engine", tiny_bundle)
    assert_one_line_error(proc, "no .mcap recordings")


# ---- the pure decisions ------------------------------------------------------------------------------
def _report(*outputs: tuple[str, float, int, list | None], compared: int = 5) -> dict:
    return {"runs": 5, "skipped": 0, "compared": compared, "preprocess": None,
            "outputs": [{"output": n, "tol": 1e-4, "runs": 5, "max_abs": m, "bad_values": b, "first_bad": f}
                        for n, m, b, f in outputs]}


def test_summary_statuses_and_exit_codes():
    ok = report_rows("a", _report(("x", 0.0, 0, None), ("y", 5e-5, 0, None)), 0.1)
    reg = report_rows("b", _report(("x", 2e-3, 4, [7, 3, 0]), ("y", 0.0, 0, None)), 0.1)
    assert [r["status"] for r in ok + reg] == ["ok", "ok", "regression", "ok"]
    assert reg[0]["first_bad_tick"] == 3
    s = summarize(ok + reg, 2.0)
    assert (s.logs, s.ok, s.regression, s.error, s.exit_code) == (2, 1, 1, 0, 1)
    assert s.worst["log"] == "b" and s.worst["output"] == "x" and s.first_regression is reg[0]
    assert s.logs_per_s == 1.0
    nothing = report_rows("c", _report(compared=0), 0.1)  # a replay that compared nothing does not pass
    assert [r["status"] for r in nothing] == ["error"]
    s = summarize(ok + reg + nothing, 1.0)
    assert (s.error, s.exit_code, s.first_error["log"]) == (1, 2, "c")
    assert log_status(ok + reg + nothing) == {"a": "ok", "b": "regression", "c": "error"}


def test_worst_is_relative_to_tolerance():
    rows = [{"max_abs": 0.2, "tol": 0.3}, {"max_abs": 1e-3, "tol": 1e-4}, {"max_abs": 0.0, "tol": 0.0}]
    assert [closeness(r) for r in rows] == pytest.approx([2 / 3, 10.0, 0.0])
    assert closeness({"max_abs": 1e-9, "tol": 0.0}) == float("inf")  # bit-exact asked, not given
