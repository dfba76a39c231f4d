"""INT8 on third-party-style policies: every INT8 form through the accuracy gate, then timed against FP32.

For each model, its FP32 bundle is re-quantised with ``vla-export BUNDLE --precision int8 --int8-form F``
(as a user does, in a child process: the gate, the search, the refusal), for F in tensorrt, ort and
dynamic; then FP32 and every passing INT8 graph run interleaved on ONNX Runtime CPU with the
runtime's session settings, so the ratios come from the same run. Prints a Markdown table.

Models: the plain-PyTorch stand-ins of ``int8_standins.py`` (a conv-heavy three-camera policy and a
transformer policy), exported here, and any FP32 bundle given with ``--bundle NAME=DIR`` (the zoo's,
exported in the zoo's own environment: re-quantising needs only the bundle, not the model's code).

    python benchmarks/int8_zoo.py [--bundle act=/tmp/zoo/act-fp32 ...] [--no-standins] [--runs 20]
        [--threads 1] [--search-seconds 300] [--json OUT]

Targets (issue 16): INT8 passes the gate at <= 2 % relative ADE on at least two of three policies,
and runs >= 1.3x FP32 on the conv-heavy one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
from int8_standins import STANDINS, save_archive
from machine import describe

from vla.export.scenes import scene_sets
from vla.export.speed import median_latencies_ms
from vla.runtime.backends.ort import open_session
from vla.runtime.cli_support import run_main
from vla.runtime.errors import VlaError
from vla.runtime.manifest import parse_manifest, with_files

FORMS = ("tensorrt", "ort", "dynamic")
EXPORT = [sys.executable, "-m", "vla.export.cli"]


def _export(args: list[str]) -> tuple[bool, str]:
    done = subprocess.run([*EXPORT, *args], capture_output=True, text=True)
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return done.returncode == 0, last


def _fp32_bundle(name: str, work: Path) -> Path:
    archive = save_archive(name, work / f"{name}.pt2")
    out = work / f"{name}-fp32"
    ok, last = _export([str(archive), "-o", str(out)])
    if not ok:
        raise VlaError(f"FP32 export of the {name} stand-in failed: {last}")
    return out


def _bare(path: Path) -> onnx.ModelProto:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    return model


def measure_model(name: str, fp32: Path, work: Path, a: argparse.Namespace) -> list[dict]:
    spec = with_files(parse_manifest(json.loads((fp32 / "manifest.json").read_text())), fp32)  # + its tokenizer
    rows, models = [], {"fp32": _bare(fp32 / "model.onnx")}
    for form in a.forms:
        out = work / f"{name}-{form}"
        ok, last = _export([str(fp32), "-o", str(out), "--precision", "int8", "--int8-form", form,
                            "--search-seconds", str(a.search_seconds), "--heldout", str(a.heldout)])
        row = {"model": name, "form": form, "passed": ok}
        if ok:
            acc = json.loads((out / "manifest.json").read_text())["measured"]["accuracy"]
            row.update(rel_ade=acc["rel_ade"], ade_m=acc["ade_m"],
                       kept=[m["module"] for m in acc.get("excluded_modules", [])])
            models[form] = _bare(out / "model.onnx")
        else:
            row["refusal"] = last
        rows.append(row)
        print(f"{name} {form}: {'passes' if ok else 'refused'}" + ("" if ok else f": {last}"), file=sys.stderr)
    sess = open_session(str(fp32 / "model.onnx"), threads=1)
    names = [o.name for o in sess.get_outputs()]
    feeds = scene_sets(spec, lambda f: dict(zip(names, sess.run(None, f), strict=True)), count=1, seed=77)[0]
    ms = median_latencies_ms(models, feeds, runs=a.runs, warmup=3, threads=a.threads)
    for row in rows:
        row["fp32_ms"] = ms["fp32"]
        if row["form"] in ms:
            row["int8_ms"] = ms[row["form"]]
            row["speedup"] = ms["fp32"] / ms[row["form"]]
    return rows


def table(rows: list[dict]) -> str:
    out = ["| model | INT8 form | gate (rel. ADE) | kept in FP32 | FP32 ms | INT8 ms | x FP32 |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["passed"]:
            gate = f"passes ({100 * r['rel_ade']:.2f} %)"
            kept = ", ".join(r["kept"]) or "none"
            out.append(f"| {r['model']} | {r['form']} | {gate} | {kept} | {r['fp32_ms']:.1f} | {r['int8_ms']:.1f} | "
                       f"{r['speedup']:.2f} |")
        else:
            out.append(f"| {r['model']} | {r['form']} | refused | - | {r['fp32_ms']:.1f} | - | - |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", action="append", default=[], metavar="NAME=DIR", help="an FP32 bundle to include")
    p.add_argument("--no-standins", action="store_true", help="only the --bundle models")
    p.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="engine threads while timing (default 1)")
    p.add_argument("--heldout", type=int, default=16)
    p.add_argument("--search-seconds", type=float, default=300.0)
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    a = p.parse_args()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vla-int8zoo-") as tmp:
        work = Path(tmp)
        bundles = {} if a.no_standins else {f"{n} (stand-in)": _fp32_bundle(n, work) for n in STANDINS}
        for item in a.bundle:
            name, sep, folder = item.partition("=")
            if not sep or not Path(folder).is_dir():
                raise VlaError(f"--bundle {item}: give NAME=DIR with DIR an FP32 bundle folder")
            bundles[name] = Path(folder)
        for name, folder in bundles.items():
            rows += measure_model(name.split()[0], folder, work, a)
    print(f"machine: {describe()}; ONNX Runtime CPU, {a.threads} engine thread(s), medians of {a.runs} "
          "interleaved runs")
    print(table(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main("int8_zoo", main))
