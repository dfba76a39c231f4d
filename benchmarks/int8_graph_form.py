"""Why the clean-up runs ONNX Runtime's basic optimisations: the same INT8 Q/DQ placement on the
reference graph as exported (MatMul + Add per linear layer) and after the clean-up (Gemm on a 2-D
view), each timed against its FP32 graph, interleaved, one engine thread as the runtime uses.

    python benchmarks/int8_graph_form.py [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx
from machine import describe
from reference_export import export_reference

from vla.export.precision import Int8Converter
from vla.export.scenes import scene_sets
from vla.export.speed import median_latencies_ms
from vla.runtime.backends.ort import open_session
from vla.runtime.cli_support import run_main
from vla.runtime.manifest import parse_manifest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args()
    models, feeds = {}, None
    with tempfile.TemporaryDirectory(prefix="vla-form-") as tmp:
        for form, extra in (("as_exported", ["--no-slim"]), ("cleaned", [])):
            out = Path(tmp) / form
            export_reference(out, *extra)
            fp32 = onnx.load(str(out / "model.onnx"))
            del fp32.metadata_props[:]
            spec = parse_manifest(json.loads((out / "manifest.json").read_text()))
            sess = open_session(str(out / "model.onnx"))
            names = [o.name for o in sess.get_outputs()]
            sets = scene_sets(spec, lambda f, s=sess, n=names: dict(zip(n, s.run(None, f), strict=True)),
                              count=16, seed=1000)
            feeds = feeds or sets[0]
            conv = Int8Converter(fp32, sets)
            models[f"{form} fp32"], models[f"{form} int8"] = fp32, conv.build([])
            conv.close()
    ms = median_latencies_ms(models, feeds, runs=args.runs, warmup=2, threads=1)
    print(f"machine: {describe()}")
    for form in ("as_exported", "cleaned"):
        a, b = ms[f"{form} fp32"], ms[f"{form} int8"]
        print(f"{form:12} FP32 {a:6.1f} ms  INT8 {b:6.1f} ms  x{a / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main("int8_graph_form", main))
