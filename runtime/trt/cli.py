"""``vla-build BUNDLE``: build a bundle's TensorRT plan on the machine that will run it, with its sidecar.

Engines are specific to a GPU and a TensorRT version, so this runs on the target (Jetson, DRIVE,
an x86 GPU box), once per bundle and device. Without ``-o`` the plan goes where ``vla-run --backend
trt`` looks for it (``BUNDLE/engines/<gpu>-trt<version>.plan``), so a build ahead of time saves the
first run its minutes. A bundle of stages (``stages`` in its manifest, one graph per stage) gets a
plan per stage in that same cache (``BUNDLE/engines/<stage>-<gpu>-trt<version>.plan``), each
decided (up to date, stale, missing) on its own. The bundle, plugins and options are checked before
TensorRT is imported, so a typo is reported as such even on a machine without TensorRT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from ..bundle import staged_manifest
from ..cli_support import run_main
from ..errors import VlaError
from . import CudaDevice, import_cudart, import_tensorrt, platform_tag, probe_cuda
from .build import MB, BuildOptions, Bundle, PluginLib, build_plan, hash_plugins, open_bundle, open_stage, plan_key
from .cache import cache_path, decide, short_hash, sidecar_path

GB = 1 << 30

EPILOG = """\
examples:
  vla-build bundles/reference                       # -> bundles/reference/engines/<gpu>-trt<version>.plan
  vla-build bundles/reference -o v2.plan            # plan + v2.plan.json (its sidecar manifest)
  vla-build bundles/mine --plugin build/libmyops.so --workspace-mb 2048
  vla-build bundles/staged                          # a bundle of stages: a plan per stage, in its engines/
  vla-run --engine v2.plan --camera /dev/video0     # run it

An existing plan is rebuilt only when it is stale (another TensorRT, GPU, bundle, plugin or option;
the reasons are printed); --force rebuilds it anyway. Precision is the bundle's (vla-export
--precision): TensorRT builds the graph strongly typed, with no precision flags of its own.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vla-build", description="Build a bundle's TensorRT plan on this machine "
                                "(TensorRT 10.3+ and a GPU), with a sidecar manifest saying what it was built "
                                "from and for.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder from vla-export (model.onnx + manifest.json, "
                   "or a bundle of stages: one graph per stage)")
    p.add_argument("-o", "--output", metavar="PLAN",
                   help="plan file, ending in .plan (default: BUNDLE/engines/<gpu>-trt<version>.plan, "
                   "where vla-run --backend trt looks); refused for a bundle of stages, whose plans (one per "
                   "stage) live only in its engines/ cache")
    p.add_argument("--workspace-mb", type=int, metavar="N",
                   help="builder workspace limit (default: half the free GPU memory, at least 256 MB)")
    p.add_argument("--plugin", action="append", default=[], metavar="LIB",
                   help="TensorRT plugin library the graph needs (repeatable); its sha256 goes in the sidecar")
    p.add_argument("--timing-cache", metavar="FILE",
                   help="timing cache to read and update (default: beside the plan, per GPU and TensorRT)")
    p.add_argument("--force", action="store_true", help="rebuild even if the plan is up to date")
    p.add_argument("--device", type=int, default=0, metavar="N", help="CUDA device index (default 0)")
    p.add_argument("--heartbeat-s", type=float, default=10.0, metavar="S",
                   help="print a progress line every S seconds while building (default 10; 0: off)")
    p.add_argument("--verbose", action="store_true", help="also print TensorRT's info messages")
    return p


def _say(line: str) -> None:
    print(line, flush=True)


def _output(arg: str | None) -> Path | None:
    if arg is None:
        return None
    out = Path(arg)
    if out.suffix != ".plan":
        raise VlaError(f"-o {arg}: name the plan file with a .plan suffix (vla-run and vla-bench tell plans by it)")
    if out.is_dir():
        raise VlaError(f"-o {arg}: is a folder; give the plan's file name")
    return out


def _build(args: argparse.Namespace) -> int:
    return build_bundle(args.bundle, output=args.output, workspace_mb=args.workspace_mb, plugins=args.plugin,
                        timing_cache=args.timing_cache, force=args.force, device=args.device,
                        heartbeat_s=args.heartbeat_s, verbose=args.verbose)


def build_bundle(bundle_path: str | Path, *, output: str | None = None, workspace_mb: int | None = None,
                 plugins: list[str] | tuple[str, ...] = (), timing_cache: str | None = None, force: bool = False,
                 device: int = 0, heartbeat_s: float = 10.0, verbose: bool = False) -> int:
    """What ``vla-build`` does (also ``vla-export --build``): check, then build or say the plan is up to date
    (for a bundle of stages, each stage's plan in turn)."""
    # Everything that needs no TensorRT first: these are the errors a user can fix anywhere.
    staged = staged_manifest(bundle_path)
    if staged is not None and output is not None:
        raise VlaError(f"-o {output}: the plans of a bundle of stages live in the bundle's cache "
                       f"({Path(bundle_path) / 'engines'}/<stage>-<gpu>-trt<version>.plan, where vla-run --backend "
                       "trt looks), one per stage; leave out -o")
    if staged is not None:
        parts = [open_stage(bundle_path, s, staged.stage_manifest(s), staged) for s in staged.stages]
    else:
        parts = [open_bundle(bundle_path)]
    libs = hash_plugins(list(plugins))
    if workspace_mb is not None and workspace_mb <= 0:
        raise VlaError(f"--workspace-mb {workspace_mb}: must be a positive number of MB")
    out = _output(output)
    timing = Path(timing_cache) if timing_cache else None
    if timing is not None and timing.is_dir():
        raise VlaError(f"--timing-cache {timing_cache}: is a folder; give a file name")

    trt = import_tensorrt()
    dev = probe_cuda(device, import_cudart())
    _say(f"vla-build: TensorRT {trt.__version__}, CUDA driver {dev.driver} (runtime {dev.runtime}), {platform_tag()}")
    _say(f"GPU {dev.index}: {dev.name} (compute capability {dev.compute_capability}), "
        f"{dev.free_bytes / GB:.1f} GB free of {dev.total_bytes / GB:.1f} GB")
    if staged is None:
        _say(f"bundle: {parts[0].dir} (model {parts[0].manifest.name}, {short_hash(parts[0].model_hash)})")
    else:
        _say(f"bundle: {parts[0].dir} (model {staged.name}, {len(parts)} stages: "
             f"{', '.join(p.stage or '' for p in parts)}): a plan per stage")
    if threading.current_thread() is threading.main_thread():
        # The builder holds the main thread for minutes and Python runs signal handlers only there,
        # so Ctrl-C would wait for the build's end; let it stop the process at once instead (nothing
        # half-written is left: plan and sidecar are written atomically after the build).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    options = BuildOptions(workspace_mb=workspace_mb, timing_cache=timing, heartbeat_s=heartbeat_s, verbose=verbose)
    for i, part in enumerate(parts, 1):
        if part.stage is not None:
            _say(f"stage {i}/{len(parts)} '{part.stage}': {part.model.name} ({short_hash(part.model_hash)})")
        _build_one(part, out, trt.__version__, dev, libs, options, force)
    return 0


def _build_one(bundle: Bundle, out: Path | None, version: str, dev: CudaDevice, libs: list[PluginLib],
               options: BuildOptions, force: bool) -> None:
    """One plan (a bundle's, or one stage's): say it is up to date, or why it is rebuilt, then build it."""
    key = plan_key(version, dev, bundle, libs, options.workspace_mb)
    plan = out or cache_path(bundle.dir, key, bundle.model.name, stage=bundle.stage)
    if plan.exists() and not force:
        if not sidecar_path(plan).is_file():
            raise VlaError(f"{plan} exists and has no sidecar manifest {sidecar_path(plan).name}, so what it was "
                           "built from is unknown; pass --force to overwrite it")
        decision = decide(plan, key, rebuild=True)
        if decision.action == "reuse":
            built_from = f"stage '{bundle.stage}'" if bundle.stage else "this bundle"
            _say(f"up to date: {plan} was built from {built_from} for this GPU and TensorRT (--force rebuilds it)")
            return
        _say(decision.message)
    _say(f"plan: {plan}")
    doc = build_plan(bundle, plan, key, dev, libs, options, _say)
    built = doc["built"]
    _say(f"built in {built['elapsed_s']:.1f} s: {plan} ({built['plan_bytes'] / MB:.1f} MB), "
        f"sidecar {sidecar_path(plan).name}, timing cache {doc['timing_cache']['path']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main("vla-build", lambda: _build(args))


if __name__ == "__main__":
    sys.exit(main())
