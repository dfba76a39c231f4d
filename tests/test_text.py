"""Route commands and text, end to end: a real Hugging Face ``tokenizers`` tokenizer (trained here,
offline) exported into a bundle with ``--tokenizer``, a one-word word-vocabulary model, and a model
with no command input, each through vla-export, vla-run (and the Runner's run-time command channel)
and vla-bench.

Three tiny policies (texty.py, written into a temporary folder) keep each export to seconds; the
exports run side by side once per module.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from conftest import VLA_EXPORT, VLA_RUN, assert_one_line_error, run_cli
from vla.runtime.errors import VlaError

tokenizers = pytest.importorskip("tokenizers")

VLA_BENCH = [sys.executable, "-m", "vla.runtime.bench.cli"]
CAM = "synthetic://?size=64x32&fps=30"
TEXT_LEN = 16
EMBED_ROWS = 128

MODELS = '''
import torch
from torch import nn


def path(feature):
    """A gentle arc at 10 m/s whose bend the features set: within the loop's plausibility limits."""
    x = torch.arange(1, 5, dtype=torch.float32)
    c = 0.05 * torch.tanh(feature.sum(-1, keepdim=True))
    y = c * x * x
    return torch.stack([x.expand_as(y), y, 2 * c * x], -1).view(1, 1, 4, 3)


class TextPolicy(nn.Module):
    """Camera + subword text ids + an int64 attention mask, as a transformers text encoder takes them."""

    def __init__(self, rows, dim=8):
        super().__init__()
        self.embed = nn.Embedding(rows, dim)
        self.cam = nn.Conv2d(3, dim, 8, stride=8)
        self.mix = nn.Linear(2 * dim, dim)

    def forward(self, images, text_ids, text_mask):
        f = self.cam(images[:, 0].float() / 255.0).mean((2, 3))
        m = text_mask.unsqueeze(-1).float()
        t = (self.embed(text_ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
        return (path(self.mix(torch.cat([f, 4.0 * t], -1))),)


class NavPolicy(nn.Module):
    """A nav command id and a one-word text input from a word vocabulary."""

    def __init__(self, dim=8):
        super().__init__()
        self.embed = nn.Embedding(5, dim)
        self.nav = nn.Embedding(3, dim)
        self.cam = nn.Conv2d(3, dim, 8, stride=8)

    def forward(self, images, nav_cmd, text_ids):
        f = self.cam(images[:, 0].float() / 255.0).mean((2, 3))
        return (path(f + self.nav(nav_cmd) + self.embed(text_ids).mean(1)),)


class CameraOnly(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.cam = nn.Conv2d(3, dim, 8, stride=8)

    def forward(self, images):
        return (path(self.cam(images[:, 0].float() / 255.0).mean((2, 3))),)


def build_text():
    torch.manual_seed(0)
    return TextPolicy(EMBED_ROWS)


def build_nav():
    torch.manual_seed(0)
    return NavPolicy()


def build_camera():
    torch.manual_seed(0)
    return CameraOnly()
'''.replace("EMBED_ROWS", str(EMBED_ROWS))

CAMERA = {"name": "images", "dtype": "uint8", "role": "camera", "shape": [1, 1, 3, 16, 32],
          "camera": {"names": ["front"], "layout": "NCHW", "color": "RGB", "height": 16, "width": 32}}
TRAJECTORY = {"name": "trajectory", "dtype": "float32", "role": "trajectory", "shape": [1, 1, 4, 3],
              "trajectory": {"dt": 0.1, "horizon_s": 0.4, "frame": "ego", "fields": ["x", "y", "yaw"]}}
TEXT_SPEC = {
    "schema_version": 1, "model": {"name": "text-policy"}, "default_command": "follow the road",
    "inputs": [CAMERA,
               {"name": "text_ids", "dtype": "int64", "role": "text", "shape": [1, TEXT_LEN], "text": {"kind": "ids"}},
               {"name": "text_mask", "dtype": "int64", "role": "text", "shape": [1, TEXT_LEN],
                "text": {"kind": "mask"}}],
    "outputs": [TRAJECTORY],
}
NAV_SPEC = {
    "schema_version": 1, "model": {"name": "one-word"},
    "inputs": [CAMERA, {"name": "nav_cmd", "dtype": "int64", "role": "command", "shape": [1]},
               {"name": "text_ids", "dtype": "int64", "role": "text", "shape": [1, 1], "text": {"kind": "ids"}}],
    "outputs": [TRAJECTORY],
    "vocabulary": {"tokens": ["<pad>", "follow", "straight", "left", "right"], "pad": "<pad>",
                   "commands": [{"id": 0, "name": "follow", "phrases": ["follow the road", "follow"]},
                                {"id": 1, "name": "straight", "phrases": ["go straight", "straight"]},
                                {"id": 2, "name": "left", "phrases": ["turn left", "left"]}]},
}
CAMERA_SPEC = {"schema_version": 1, "model": {"name": "camera-only"}, "inputs": [CAMERA], "outputs": [TRAJECTORY]}
SENTENCES = ["turn left at the next intersection", "turn right at the next intersection", "go straight",
             "follow the road", "stop at the light", "change lane to the left", "take the exit"]


def _train_tokenizer(out: Path) -> None:
    """A BERT-style WordPiece tokenizer ([CLS] text [SEP]) trained on a few driving sentences."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(SENTENCES * 5, trainers.WordPieceTrainer(
        vocab_size=EMBED_ROWS - 8, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                                                 ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.save(str(out))


def _large_tokenizer(out: Path, size: int) -> None:
    """A word-level tokenizer with more ids than the text model's embedding has rows."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(size - 2)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(out))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """texty.py, the tokenizers, the specs, the weights; then the four exports at once."""
    import torch

    root = tmp_path_factory.mktemp("text")
    (root / "texty.py").write_text(MODELS)
    _train_tokenizer(root / "tokenizer.json")
    _large_tokenizer(root / "large.json", 300)
    for name, spec in (("text", TEXT_SPEC), ("nav", NAV_SPEC), ("camera", CAMERA_SPEC)):
        (root / f"{name}.json").write_text(json.dumps(spec))
    sys.path.insert(0, str(root))
    try:
        import texty

        for name in ("text", "nav", "camera"):
            torch.save(getattr(texty, f"build_{name}")().state_dict(), root / f"{name}.pt")
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("texty", None)
    jobs = {
        "text": ("text.pt", "--factory", "texty:build_text", "--spec", "text.json", "--tokenizer", "tokenizer.json",
                 "--command", "turn left at the next intersection", "-o", "text"),
        "nav": ("nav.pt", "--factory", "texty:build_nav", "--spec", "nav.json", "-o", "nav"),
        "camera": ("camera.pt", "--factory", "texty:build_camera", "--spec", "camera.json", "-o", "camera"),
        "large": ("text.pt", "--factory", "texty:build_text", "--spec", "text.json", "--tokenizer", "large.json",
                  "-o", "large"),
    }
    procs = {k: subprocess.Popen([*VLA_EXPORT, *args], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for k, args in jobs.items()}
    for name, proc in procs.items():
        _, err = proc.communicate()
        (root / f"{name}.stderr").write_text(err)
        (root / f"{name}.rc").write_text(str(proc.returncode))
    return root


def _exported(work: Path, name: str) -> Path:
    assert (work / f"{name}.rc").read_text() == "0", (work / f"{name}.stderr").read_text()
    return work / name


def _records(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "cut to" in line or "it gets" in line]


# ---- the tokenizer in the bundle ------------------------------------------------------------------------


def test_tokenizer_is_copied_hashed_and_checked_against_the_embedding(work):
    bundle = _exported(work, "text")
    manifest = json.loads((bundle / "manifest.json").read_text())
    source = (work / "tokenizer.json").read_bytes()
    assert (bundle / "tokenizer.json").read_bytes() == source
    block = manifest["tokenizer"]
    assert block["sha256"] == "sha256:" + hashlib.sha256(source).hexdigest()
    trained = tokenizers.Tokenizer.from_file(str(work / "tokenizer.json"))
    assert block["vocab_size"] == trained.get_vocab_size() <= EMBED_ROWS
    assert block["pad_id"] == trained.token_to_id("[PAD]")
    # Reproducible: the embedded manifest holds the file's hash, never where it came from.
    embedded = next(p.value for p in onnx.load(str(bundle / "model.onnx")).metadata_props if p.key == "vla.manifest")
    assert block["sha256"] in embedded and str(work) not in embedded
    assert manifest["export"]["options"].get("command") is None  # fp32: the command decides nothing in the graph

    from vla.export.text import embedding_rows

    assert embedding_rows(onnx.load(str(bundle / "model.onnx")), "text_ids") == EMBED_ROWS


def test_a_tokenizer_larger_than_the_embedding_is_refused(work):
    assert (work / "large.rc").read_text() != "0"
    err = (work / "large.stderr").read_text()
    assert "Traceback" not in err and not (work / "large").exists()
    line = err.strip().splitlines()[-1]
    assert "error" in line and "300 ids" in line and f"{EMBED_ROWS} rows" in line, err


# ---- vla-run, the Runner and vla-bench on the tokenizer bundle ---------------------------------------------


def test_run_with_a_multi_word_command_and_the_default_from_the_spec(work):
    bundle = _exported(work, "text")
    text = "turn left at the next intersection"
    proc = run_cli(VLA_RUN, "--engine", bundle, "--camera", CAM, "--frames", "4", "--command", text)
    assert proc.returncode == 0, proc.stderr
    assert f"command '{text}'" in proc.stderr and not _warnings(proc.stderr)
    assert [r["command"] for r in _records(proc)] == [text] * 4
    default = run_cli(VLA_RUN, "--engine", bundle, "--camera", CAM, "--frames", "2")
    assert default.returncode == 0, default.stderr
    assert "command 'follow the road'" in default.stderr  # the spec's default_command


def test_text_longer_than_the_model_reads_is_cut_with_one_warning(work):
    bundle = _exported(work, "text")
    text = " ".join(SENTENCES)
    proc = run_cli(VLA_RUN, "--engine", bundle, "--camera", CAM, "--frames", "2", "--command", text)
    assert proc.returncode == 0, proc.stderr
    warned = _warnings(proc.stderr)
    assert len(warned) == 1 and f"reads {TEXT_LEN}: cut to the first {TEXT_LEN}" in warned[0]


def test_command_changed_at_run_time_goes_through_the_tokenizer(work):
    from vla.runtime import RunConfig, Runner, open_cameras, open_engine

    bundle = _exported(work, "text")
    trained = tokenizers.Tokenizer.from_file(str(bundle / "tokenizer.json"))
    backend = open_engine(str(bundle))
    cameras = open_cameras([CAM], backend.manifest.camera_names, backend.manifest.camera_sizes)
    notes: list[str] = []
    runner = Runner(backend, cameras, RunConfig(max_ticks=6, budget_ms=1000, command="go straight",
                                                log=notes.append))
    seen = []
    try:
        for i, record in enumerate(runner):
            seen.append((record["command"], backend.feed("text_ids")[0].copy(), backend.feed("text_mask")[0].copy()))
            if i == 2:
                assert runner.set_command("turn right at the next intersection") == \
                    "turn right at the next intersection"
                with pytest.raises(VlaError, match="is empty"):
                    runner.set_command("  ")
    finally:
        runner.close()
    for command, ids, mask in seen:
        expected = trained.encode(command).ids
        assert ids[: len(expected)].tolist() == expected and mask.tolist() == [1] * len(expected) + [0] * (
            TEXT_LEN - len(expected))
        assert (ids[len(expected):] == trained.token_to_id("[PAD]")).all()
    assert [c for c, _, _ in seen] == ["go straight"] * 3 + ["turn right at the next intersection"] * 3
    assert not [n for n in notes if "route command" in n]


def test_bench_takes_the_command_in_engine_and_loop_mode(work):
    bundle = _exported(work, "text")
    engine = run_cli(VLA_BENCH, "--engine", bundle, "--iterations", "3", "--duration", "0", "--warmup", "0",
                     "--command", "turn right at the next intersection")
    assert engine.returncode == 0, engine.stderr
    loop = run_cli(VLA_BENCH, "--engine", bundle, "--loop", "--ticks", "3", "--camera", CAM,
                   "--command", " ".join(SENTENCES))
    assert loop.returncode == 0, loop.stderr
    assert len(_warnings(loop.stderr)) == 1


def test_a_changed_or_missing_tokenizer_is_one_line(work, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(_exported(work, "text"), bundle)
    with (bundle / "tokenizer.json").open("a") as f:
        f.write("\n")
    assert_one_line_error(run_cli(VLA_RUN, "--engine", bundle, "--camera", CAM, "--frames", "1"),
                          "tokenizer changed since the export")
    blocked = ("import sys; sys.modules['tokenizers'] = None; from vla.runtime.cli import main; "
               f"sys.exit(main(['--engine', {str(_exported(work, 'text'))!r}, '--camera', {CAM!r}, '--frames', '1']))")
    assert_one_line_error(run_cli([sys.executable, "-c", blocked]), "tokenizer", "pip install")


# ---- word vocabularies, defaults and models without a command ----------------------------------------------


def test_one_word_vocabulary_model_takes_a_multi_word_command(work):
    bundle = _exported(work, "nav")
    export_err = (work / "nav.stderr").read_text()
    assert "has 3 words" not in export_err
    proc = run_cli(VLA_RUN, "--engine", bundle, "--camera", CAM, "--frames", "3",
                   "--command", "turn left at the next intersection")
    assert proc.returncode == 0, proc.stderr
    warned = _warnings(proc.stderr)
    assert len(warned) == 1 and "it gets 'left' (command left)" in warned[0]
    assert {r["command"] for r in _records(proc)} == {"left"}
    default = run_cli(VLA_RUN, "--engine", bundle, "--camera", CAM, "--frames", "1")
    assert default.returncode == 0 and "command 'follow'" in default.stderr and not _warnings(default.stderr)
    # A command that fits is fed word by word, so an unknown word is still an error (no <unk>).
    assert_one_line_error(run_cli(VLA_RUN, "--engine", bundle, "--camera", CAM, "--frames", "1",
                                  "--command", "lft"), "['lft']")


def test_scenes_feed_only_commands_the_model_takes(work):
    from vla.export.scenes import scene_sets
    from vla.runtime.engine import read_manifest

    def no_state(feeds):
        raise AssertionError("a model without state is never stepped")

    nav = read_manifest(_exported(work, "nav") / "model.onnx", _exported(work, "nav") / "manifest.json")
    sets = scene_sets(nav, no_state, count=8, seed=3, ticks_per_drive=1)  # 8 drives, 8 draws
    words = {int(s["text_ids"][0, 0]) for s in sets}
    assert words <= {1, 2, 3} and len(words) > 1  # follow, straight, left: one-word phrases, more than one
    assert all(int(s["nav_cmd"][0]) == int(s["text_ids"][0, 0]) - 1 for s in sets)  # phrase and nav id agree
    text = read_manifest(_exported(work, "text") / "model.onnx", _exported(work, "text") / "manifest.json")
    given = scene_sets(text, no_state, count=2, seed=3, command="take the exit")
    trained = tokenizers.Tokenizer.from_file(str(work / "tokenizer.json"))
    expected = trained.encode("take the exit").ids
    assert all(s["text_ids"][0, : len(expected)].tolist() == expected for s in given)


def test_default_command_is_one_the_model_takes():
    from vla.export.text import check_commands
    from vla.runtime.inputs.commands import CommandEncoder
    from vla.runtime.manifest import parse_manifest

    assert CommandEncoder(parse_manifest(NAV_SPEC)).default() == "follow"  # "follow the road" has 3 words
    named = parse_manifest({**NAV_SPEC, "default_command": "go straight"})
    assert CommandEncoder(named).encode(None).nav_name == "straight"
    with pytest.raises(VlaError, match=r"default_command.*'lft'"):
        check_commands(parse_manifest({**NAV_SPEC, "default_command": "lft"}), None, print)
    nothing_fits = {**NAV_SPEC, "vocabulary": {**NAV_SPEC["vocabulary"], "commands": [
        {"id": 0, "name": "follow", "phrases": ["follow the road"]}]}}
    with pytest.raises(VlaError, match=r"no default route command.*default_command"):
        check_commands(parse_manifest(nothing_fits), None, print)


def test_a_command_for_a_model_without_command_input_is_refused(work):
    bundle = _exported(work, "camera")
    assert_one_line_error(run_cli(VLA_RUN, "--engine", bundle, "--camera", CAM, "--frames", "1",
                                  "--command", "turn left"), "takes no route command", "drop --command")
    plain = run_cli(VLA_RUN, "--engine", bundle, "--camera", CAM, "--frames", "1")
    assert plain.returncode == 0 and "no command input" in plain.stderr and "command ''" not in plain.stderr
    assert_one_line_error(run_cli(VLA_BENCH, "--engine", bundle, "--duration", "0", "--command", "turn left"),
                          "takes no route command")

    from vla.export.text import check_commands
    from vla.runtime.manifest import parse_manifest

    with pytest.raises(VlaError, match="takes no route command"):
        check_commands(parse_manifest(CAMERA_SPEC), "turn left", print)


def test_text_inputs_need_a_vocabulary_or_a_tokenizer():
    from vla.runtime.errors import ManifestError
    from vla.runtime.manifest import parse_manifest

    with pytest.raises(ManifestError, match="or a tokenizer"):
        parse_manifest(TEXT_SPEC)  # no --tokenizer, no word vocabulary
    nav_only = {**NAV_SPEC, "inputs": NAV_SPEC["inputs"][:2],
                "vocabulary": {"commands": NAV_SPEC["vocabulary"]["commands"]}}
    from vla.runtime.inputs.commands import CommandEncoder

    # Nav ids alone need no word tokens, and read any length of text: only the command it names matters.
    enc = CommandEncoder(parse_manifest(nav_only)).encode("please turn left at the next intersection")
    assert (enc.nav_id, enc.nav_name, enc.note) == (2, "left", None)


def test_a_scalar_nav_command_input_takes_the_command():
    """A 0-d ``command`` input (the schema allows shape []) is written in place like any other."""
    from vla.runtime.inputs.feeds import example_feeds
    from vla.runtime.manifest import parse_manifest

    traj = {"dt": 0.1, "horizon_s": 0.4, "frame": "ego", "fields": ["x", "y", "yaw"]}
    manifest = parse_manifest({
        "schema_version": 1, "model": {"name": "scalar-cmd"},
        "inputs": [{"name": "cmd", "dtype": "int64", "role": "command", "shape": []}],
        "outputs": [{"name": "trajectory", "dtype": "float32", "role": "trajectory", "shape": [1, 1, 4, 3],
                     "trajectory": traj}],
        "vocabulary": {"commands": [{"id": 0, "name": "follow", "phrases": ["follow the road"]},
                                    {"id": 2, "name": "left", "phrases": ["turn left"]}]}})
    assert int(example_feeds(manifest, 0, "turn left at the lights")["cmd"]) == 2
    assert int(example_feeds(manifest, 0, "follow the road")["cmd"]) == 0
