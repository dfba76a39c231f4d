"""The zoo: three driving policies built from the libraries of the field, tiny, offline, random weights.

Each builder returns ``Built(module, spec, inputs)`` (a named 3-tuple): the ``nn.Module`` in eval mode
whose ``forward`` takes the runtime's roles in the spec's input order, the I/O spec (a dict, the
``inputs``/``outputs``/``vocabulary`` part of a manifest; also set as ``module.vla_spec``), and
example inputs (a tuple of tensors in that order, seeded):

- ``build_act(seed=0)``: LeRobot's ACT (``lerobot.policies.act``: torchvision ResNet-18 backbone,
  transformer encoder/decoder, action chunk) on two uint8 cameras, a 3-field ego subset
  ``[v, a, yaw_rate]`` over 2 steps and a route command (nav id); the chunk's actions are per-step
  (dx, dy), summed into one trajectory ``[1, 1, 20, 2]``.
- ``build_diffusion(seed=0, steps=4)``: LeRobot's Diffusion Policy (its ResNet-18 + spatial-softmax
  image encoder and 1-D conditional U-Net) on one float camera (normalised by the runtime), the
  full ego and a route command; its DDIM sampler unrolled over ``steps`` (a Python int) with the timesteps and alphas
  that diffusers' ``DDIMScheduler.set_timesteps`` gives, precomputed into buffers at build time, and
  the starting noise as a ``noise`` input ``[1, 3, 16, 3]``: three candidate trajectories.
- ``build_text_policy(seed=0)``: a timm ResNet (``resnet10t``, shared by three cameras: three
  branches, one set of weights), a BERT-style text encoder (``transformers.BertModel`` from a
  config) reading ``text_ids``/``text_mask`` made by a WordPiece tokenizer trained here with
  ``tokenizers`` (``train_tokenizer``), a reordered ego subset ``[yaw_rate, v]``, and a GRU cell
  whose hidden vector is a recurrent ``state``; outputs ``trajectory [1, 3, 20, 3]``, ``score``
  and the new hidden state.

The ``*_factory`` functions (``act_factory``, ``diffusion_factory``, ``text_factory`` with a word
vocabulary, ``text_factory_tokenizer`` for ``--tokenizer``) return the module alone, for
``vla-export WEIGHTS --factory zoo.policies:act_factory`` (with ``tests`` on the import path).
``python -m zoo.make NAME DIR`` saves one as the tests do (``zoo/make.py``).

Imports of torch and the libraries are inside the functions: the main environment (CPU torch, no
torchvision) can import this module for its constants; building needs the zoo env (``zoo/env.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

#: A multi-word route command every zoo policy takes (the text policy's tokenizer knows its words).
COMMAND = "turn left at the next intersection"

#: The text policy's tokenizer is trained on these (driving commands); ``COMMAND`` is among them.
CORPUS = (
    "follow the lane", "keep going straight ahead", "turn left at the next intersection",
    "turn right at the next intersection", "take the second exit at the roundabout", "change to the left lane",
    "change to the right lane", "stop at the red light", "slow down for the pedestrian crossing",
    "merge onto the highway", "park on the right side", "pull over behind the parked car",
    "yield to oncoming traffic", "make a u turn when it is safe", "follow the car in front",
)
#: Nav ids of the command-input policies (ACT, diffusion) and their phrases; ``COMMAND`` selects id 1.
COMMANDS = (
    ("follow", ("follow the lane", "keep going straight ahead")),
    ("turn_left", (COMMAND, "turn left")),
    ("turn_right", ("turn right at the next intersection", "turn right")),
    ("stop", ("stop at the red light", "pull over behind the parked car")),
)
TEXT_LEN = 16
TEXT_VOCAB = 256  # rows of the BERT embedding: at least the tokenizer's vocabulary (trained to <= this)
IMAGE_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # ImageNet statistics in pixel units (0..255)
IMAGE_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class Built(NamedTuple):
    module: Any  # torch.nn.Module, eval mode
    spec: dict[str, Any]
    inputs: tuple[Any, ...]  # torch tensors, in forward()'s order


def _camera(name: str, names: list[str], dtype: str, h: int, w: int, in_graph: bool, mean, std) -> dict:
    return {"name": name, "dtype": dtype, "role": "camera", "shape": [1, len(names), 3, h, w],
            "camera": {"names": names, "layout": "NCHW", "color": "RGB", "height": h, "width": w,
                       "normalization": {"mean": list(mean), "std": list(std), "in_graph": in_graph}}}


def _ego(name: str, fields: list[str], steps: int) -> dict:
    return {"name": name, "dtype": "float32", "role": "ego", "shape": [1, steps, len(fields)],
            "ego": {"fields": fields, "rate_hz": 10.0, "frame": "ego"}}


def _trajectory(modes: int, points: int, fields: list[str], dt: float = 0.1) -> dict:
    return {"name": "trajectory", "dtype": "float32", "role": "trajectory", "shape": [1, modes, points, len(fields)],
            "trajectory": {"dt": dt, "horizon_s": round(dt * points, 9), "frame": "ego", "fields": fields}}


def _commands() -> list[dict]:
    """Route commands (nav ids) and the phrases that select them; the first phrase is the default."""
    return [{"id": i, "name": name, "phrases": list(phrases)} for i, (name, phrases) in enumerate(COMMANDS)]


def _command_input() -> dict:
    return {"name": "nav_cmd", "dtype": "int64", "role": "command", "shape": [1]}


def _example(spec: dict, seed: int) -> tuple:
    """Seeded inputs of the spec's shapes and dtypes: random pixels, ego and noise, ``COMMAND``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for t in spec["inputs"]:
        shape, role = t["shape"], t["role"]
        if t["dtype"] == "uint8":
            out.append(torch.randint(0, 256, shape, generator=g, dtype=torch.uint8))
        elif role == "camera":
            out.append(torch.rand(shape, generator=g) * 255.0)
        elif role == "text":
            ids, mask = tokenize(train_tokenizer(), COMMAND)
            out.append(torch.tensor([ids if t["text"]["kind"] == "ids" else mask], dtype=torch.int64))
        elif role == "command":
            out.append(torch.tensor([1], dtype=torch.int64))
        elif role == "state":
            out.append(torch.full(shape, float(t["state"]["initial"])))
        else:  # ego, noise
            out.append(torch.randn(shape, generator=g))
    return tuple(out)


# ---- (a) LeRobot ACT -----------------------------------------------------------------------------------
def act_spec(cameras=("front", "left"), h: int = 96, w: int = 128, chunk: int = 20) -> dict:
    return {
        "schema_version": 1,
        "model": {"name": "zoo-lerobot-act", "source": "lerobot.policies.act (LeRobot 0.4)"},
        "inputs": [_camera("images", list(cameras), "uint8", h, w, True, IMAGE_MEAN, IMAGE_STD),
                   _ego("ego", ["v", "a", "yaw_rate"], 2), _command_input()],
        "outputs": [_trajectory(1, chunk, ["x", "y"])],
        "vocabulary": {"commands": _commands()},
    }


def _act_module(spec: dict):
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.utils.constants import OBS_ENV_STATE, OBS_IMAGES, OBS_STATE
    from torch import nn

    cam, ego, _ = spec["inputs"]
    _, n_cams, _, h, w = cam["shape"]
    chunk = spec["outputs"][0]["shape"][2]
    features = {f"observation.images.{n}": PolicyFeature(FeatureType.VISUAL, (3, h, w)) for n in cam["camera"]["names"]}
    features[OBS_STATE] = PolicyFeature(FeatureType.STATE, (ego["shape"][1] * ego["shape"][2],))
    features[OBS_ENV_STATE] = PolicyFeature(FeatureType.ENV, (len(COMMANDS),))  # the route command, one-hot
    config = ACTConfig(input_features=features, output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
                       chunk_size=chunk, n_action_steps=chunk, pretrained_backbone_weights=None, dim_model=64,
                       n_heads=2, dim_feedforward=128, n_encoder_layers=2, n_decoder_layers=1, n_vae_encoder_layers=1,
                       latent_dim=16, device="cpu")

    class ActDriving(nn.Module):
        """LeRobot's ACT behind the runtime's roles: uint8 cameras normalised in the graph, the ego
        history flattened into ACT's robot state, the route command one-hot as its environment state,
        the action chunk's (dx, dy) steps summed into a path."""

        def __init__(self) -> None:
            super().__init__()
            self.policy = ACTPolicy(config)
            self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 1, 3, 1, 1), persistent=False)
            self.register_buffer("nav_ids", torch.arange(len(COMMANDS)), persistent=False)
            self.vla_spec = spec

        def forward(self, images, ego, nav_cmd):
            x = (images.float() - self.mean) / self.std
            batch = {OBS_IMAGES: [x[:, i] for i in range(n_cams)], OBS_STATE: ego.flatten(1),
                     OBS_ENV_STATE: (nav_cmd[:, None] == self.nav_ids).float()}
            steps, _ = self.policy.model(batch)  # [B, chunk, 2]
            return steps.cumsum(1).unsqueeze(1)

    return ActDriving()


def build_act(seed: int = 0) -> Built:
    import torch

    torch.manual_seed(seed)
    spec = act_spec()
    return Built(_act_module(spec).eval(), spec, _example(spec, seed))


def act_factory():
    return build_act().module


# ---- (b) LeRobot Diffusion Policy, DDIM unrolled -------------------------------------------------------
def diffusion_spec(h: int = 96, w: int = 96, modes: int = 3, horizon: int = 16, steps: int = 4) -> dict:
    fields = ["x", "y", "yaw"]
    return {
        "schema_version": 1,
        "model": {"name": "zoo-diffusion-ddim", "source": "lerobot.policies.diffusion + diffusers DDIMScheduler",
                  "config": {"ddim_steps": steps}},
        "inputs": [_camera("image", ["front"], "float32", h, w, False, (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
                   _ego("ego", ["x", "y", "yaw", "v", "a", "yaw_rate"], 2), _command_input(),
                   {"name": "noise", "dtype": "float32", "role": "noise", "shape": [1, modes, horizon, len(fields)],
                    "noise": {"distribution": "normal", "std": 1.0}}],
        "outputs": [_trajectory(modes, horizon, fields)],
        "vocabulary": {"commands": _commands()},
    }


#: Normalised actions in [-1, 1] (LeRobot's min-max mode) -> metres and radians: x 0..20 m ahead, y ±3 m, yaw ±0.3.
ACTION_LOW = (0.0, -3.0, -0.3)
ACTION_HIGH = (20.0, 3.0, 0.3)


def _diffusion_module(spec: dict):
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.utils.constants import OBS_ENV_STATE, OBS_IMAGES, OBS_STATE
    from torch import nn

    cam, ego, _, noise = spec["inputs"]
    _, _, _, h, w = cam["shape"]
    _, modes, horizon, dims = noise["shape"]
    steps = spec["model"]["config"]["ddim_steps"]
    config = DiffusionConfig(
        input_features={"observation.images.front": PolicyFeature(FeatureType.VISUAL, (3, h, w)),
                        OBS_STATE: PolicyFeature(FeatureType.STATE, (ego["shape"][1] * ego["shape"][2],)),
                        OBS_ENV_STATE: PolicyFeature(FeatureType.ENV, (len(COMMANDS),))},  # the command, one-hot
        output_features={"action": PolicyFeature(FeatureType.ACTION, (dims,))},
        n_obs_steps=1, horizon=horizon, n_action_steps=horizon, crop_shape=None, pretrained_backbone_weights=None,
        use_group_norm=True, spatial_softmax_num_keypoints=16, down_dims=(32, 64), kernel_size=3, n_groups=4,
        diffusion_step_embed_dim=32, noise_scheduler_type="DDIM", num_train_timesteps=100,
        num_inference_steps=steps, device="cpu")

    class DiffusionDriving(nn.Module):
        """LeRobot's Diffusion Policy with its sampler unrolled for export.

        ``DiffusionModel.conditional_sample`` calls ``noise_scheduler.set_timesteps`` and loops over the
        scheduler's timesteps in ``forward``: scheduler state that torch.export cannot follow. Here the
        same scheduler's timesteps and cumulative alphas are read once, at build time, into buffers,
        and ``forward`` runs a fixed number of DDIM steps (eta 0, clipped x0, as the scheduler's
        ``step``), starting from the ``noise`` input. ``reference_sample`` runs the library's own loop,
        to check that the two agree.
        """

        def __init__(self) -> None:
            super().__init__()
            self.policy = DiffusionPolicy(config)
            sched = self.policy.diffusion.noise_scheduler  # diffusers.DDIMScheduler
            sched.set_timesteps(steps)
            ts = sched.timesteps.clone()
            prev = ts - sched.config.num_train_timesteps // steps
            acp = sched.alphas_cumprod
            a_prev = torch.where(prev >= 0, acp[prev.clamp(min=0)], sched.final_alpha_cumprod)
            self.steps, self.clip = steps, float(sched.config.clip_sample_range)
            self.register_buffer("timesteps", ts.long(), persistent=False)
            self.register_buffer("alpha", acp[ts].float(), persistent=False)
            self.register_buffer("alpha_prev", a_prev.float(), persistent=False)
            self.register_buffer("low", torch.tensor(ACTION_LOW), persistent=False)
            self.register_buffer("high", torch.tensor(ACTION_HIGH), persistent=False)
            self.register_buffer("nav_ids", torch.arange(len(COMMANDS)), persistent=False)
            self.vla_spec = spec

        def condition(self, image, ego, nav_cmd):
            batch = {OBS_STATE: ego.flatten(1).unsqueeze(1), OBS_IMAGES: image.unsqueeze(1),  # one obs step
                     OBS_ENV_STATE: (nav_cmd[:, None] == self.nav_ids).float().unsqueeze(1)}
            return self.policy.diffusion._prepare_global_conditioning(batch)

        def unnormalise(self, x, b: int):
            return ((x + 1.0) / 2.0 * (self.high - self.low) + self.low).view(b, modes, horizon, dims)

        def forward(self, image, ego, nav_cmd, noise):
            b = noise.shape[0]
            cond = self.condition(image, ego, nav_cmd).repeat_interleave(modes, dim=0)  # one row per candidate
            x = noise.flatten(0, 1)
            for k in range(self.steps):  # a Python int: unrolled into the graph
                eps = self.policy.diffusion.unet(x, self.timesteps[k].expand(x.shape[0]), global_cond=cond)
                a, a_prev = self.alpha[k], self.alpha_prev[k]
                x0 = ((x - (1.0 - a).sqrt() * eps) / a.sqrt()).clamp(-self.clip, self.clip)
                x = a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps
            return self.unnormalise(x, b)

        @torch.no_grad()
        def reference_sample(self, image, ego, nav_cmd, noise):
            """LeRobot's own sampling loop (set_timesteps + scheduler.step) from the same noise."""
            b = noise.shape[0]
            cond = self.condition(image, ego, nav_cmd).repeat_interleave(modes, dim=0)
            x = self.policy.diffusion.conditional_sample(b * modes, global_cond=cond, noise=noise.flatten(0, 1))
            return self.unnormalise(x, b)

    return DiffusionDriving()


def build_diffusion(seed: int = 0, steps: int = 4) -> Built:
    import torch

    torch.manual_seed(seed)
    spec = diffusion_spec(steps=steps)
    return Built(_diffusion_module(spec).eval(), spec, _example(spec, seed))


def diffusion_factory():
    return build_diffusion().module


#: How a user splits the diffusion policy into stages, in its spec: LeRobot's observation encoder (the
#: ResNet and the state) as the slow stage, one DDIM step of its U-Net as the repeated fast stage.
DIFFUSION_STAGES = {
    "condition": {"module": "conditioner", "rate": "async", "max_age_ms": 600},
    "denoise": {"module": "denoiser", "repeat": 4, "sample": {"input": "sample", "output": "next_sample",
                                                               "init": "noise"}, "index": "step"},
}


def _staged_diffusion(spec: dict):
    """The same LeRobot Diffusion Policy with its two halves as submodules a spec can declare as stages."""
    import torch
    from torch import nn

    inner = _diffusion_module(spec)
    _, modes, horizon, dims = spec["inputs"][3]["shape"]

    class Conditioner(nn.Module):
        """LeRobot's global conditioning: image features, the state and the command, one row per batch item."""

        output_names = ("cond",)

        def __init__(self) -> None:
            super().__init__()
            self.diffusion = inner.policy.diffusion
            self.register_buffer("nav_ids", inner.nav_ids.clone(), persistent=False)

        def forward(self, image, ego, nav_cmd):
            return inner.condition(image, ego, nav_cmd)

    class Denoiser(nn.Module):
        """One DDIM step (eta 0, clipped x0) of LeRobot's U-Net at step index ``step``, and the trajectory the
        sample stands for (unnormalised); the runtime repeats it, feeding ``next_sample`` back."""

        output_names = ("next_sample", "trajectory")

        def __init__(self) -> None:
            super().__init__()
            self.unet = inner.policy.diffusion.unet
            for name in ("timesteps", "alpha", "alpha_prev", "low", "high"):
                self.register_buffer(name, getattr(inner, name).clone(), persistent=False)

        def forward(self, sample, step, cond):
            b = sample.shape[0]
            x = sample.flatten(0, 1)
            per_row = step.repeat_interleave(modes)
            eps = self.unet(x, self.timesteps[per_row], global_cond=cond.repeat_interleave(modes, dim=0))
            a, a_prev = self.alpha[per_row][:, None, None], self.alpha_prev[per_row][:, None, None]
            x0 = ((x - (1.0 - a).sqrt() * eps) / a.sqrt()).clamp(-inner.clip, inner.clip)
            x = (a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps).view(b, modes, horizon, dims)
            return x, (x + 1.0) / 2.0 * (self.high - self.low) + self.low

    class StagedDiffusion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conditioner, self.denoiser = Conditioner(), Denoiser()
            self.steps = inner.steps

        def forward(self, image, ego, nav_cmd, noise):
            cond, x, traj = self.conditioner(image, ego, nav_cmd), noise, noise
            for k in range(self.steps):
                x, traj = self.denoiser(x, torch.full((noise.shape[0],), k, dtype=torch.int64), cond)
            return traj

    return StagedDiffusion()


def build_diffusion_staged(seed: int = 0) -> Built:
    import torch

    torch.manual_seed(seed)
    spec = diffusion_spec()
    spec["model"]["name"] = "zoo-diffusion-stages"
    return Built(_staged_diffusion(spec).eval(), {**spec, "stages": DIFFUSION_STAGES}, _example(spec, seed))


def diffusion_stages_factory():
    return build_diffusion_staged().module


# ---- (c) timm + BERT + tokenizers + GRU state ----------------------------------------------------------
def train_tokenizer(path: Path | None = None):
    """A BERT-style WordPiece tokenizer trained on ``CORPUS`` with ``tokenizers``' trainer (deterministic);
    saved as a tokenizer.json when ``path`` is given. [PAD] is id 0."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=TEXT_VOCAB, special_tokens=special, show_progress=False)
    tok.train_from_iterator(list(CORPUS), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]", length=TEXT_LEN)
    tok.enable_truncation(TEXT_LEN)
    if path is not None:
        tok.save(str(path))
    return tok


def tokenize(tok, text: str) -> tuple[list[int], list[int]]:
    enc = tok.encode(text)
    return list(enc.ids), list(enc.attention_mask)


def word_vocabulary(tok) -> dict:
    """The tokenizer's vocabulary as a manifest word vocabulary (tokens in id order, pad [PAD]): for a
    runtime without --tokenizer, whole words map to the ids the tokenizer gives them."""
    vocab = tok.get_vocab()
    return {"tokens": sorted(vocab, key=vocab.get), "pad": "[PAD]", "commands": _commands()}


def text_spec(cameras=("front", "left", "right"), h: int = 64, w: int = 96, modes: int = 3, points: int = 20,
              hidden: int = 64, word_vocab: bool = True) -> dict:
    """``word_vocab``: carry the tokenizer's vocabulary as a word vocabulary in the spec (for an export
    without ``--tokenizer``); False: the bundle reads text with tokenizer.json (``vla-export --tokenizer``)."""
    spec = {
        "schema_version": 1,
        "model": {"name": "zoo-timm-bert-gru", "source": "timm resnet10t + transformers BertModel + GRU"},
        "inputs": [
            _camera("images", list(cameras), "uint8", h, w, True, IMAGE_MEAN, IMAGE_STD),
            {"name": "text_ids", "dtype": "int64", "role": "text", "shape": [1, TEXT_LEN],
             "text": {"kind": "ids", "vocab_size": TEXT_VOCAB}},
            {"name": "text_mask", "dtype": "int64", "role": "text", "shape": [1, TEXT_LEN], "text": {"kind": "mask"}},
            _ego("ego", ["yaw_rate", "v"], 4),
            {"name": "hidden", "dtype": "float32", "role": "state", "shape": [1, hidden],
             "state": {"from_output": "new_hidden", "initial": 0.0}},
        ],
        "outputs": [
            _trajectory(modes, points, ["x", "y", "yaw"]),
            {"name": "score", "dtype": "float32", "role": "score", "shape": [1, modes],
             "score": {"kind": "probability"}},
            {"name": "new_hidden", "dtype": "float32", "role": "state", "shape": [1, hidden],
             "state": {"to_input": "hidden"}},
        ],
        "default_command": COMMAND,
    }
    if word_vocab:
        spec["vocabulary"] = word_vocabulary(train_tokenizer())
        del spec["inputs"][1]["text"]["vocab_size"]
        del spec["default_command"]
    return spec


def _text_module(spec: dict):
    import timm
    import torch
    from torch import nn
    from transformers import BertConfig, BertModel

    cam, _, _, ego, state = spec["inputs"]
    traj = spec["outputs"][0]
    _, modes, points, dims = traj["shape"]
    n_cams, hidden = cam["shape"][1], state["shape"][1]

    class TextDriving(nn.Module):
        """Cameras through one timm backbone (called once per camera: shared weights), the command
        through a BERT encoder ([CLS] vector), the ego history, all into a GRU cell whose hidden vector
        the runtime carries from tick to tick; heads for K trajectories and their probabilities."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = timm.create_model("resnet10t", pretrained=False, num_classes=0)
            self.text = BertModel(BertConfig(vocab_size=TEXT_VOCAB, hidden_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=128, max_position_embeddings=32,
                                             type_vocab_size=1), add_pooling_layer=False)
            fused = n_cams * self.backbone.num_features + 64 + ego["shape"][1] * ego["shape"][2]
            self.gru = nn.GRUCell(fused, hidden)
            self.head = nn.Linear(hidden, modes * points * dims)
            self.score = nn.Linear(hidden, modes)
            self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)
            self.vla_spec = spec

        def forward(self, images, text_ids, text_mask, ego, hidden):
            views = [self.backbone((images[:, i].float() - self.mean) / self.std) for i in range(n_cams)]
            words = self.text(input_ids=text_ids, attention_mask=text_mask).last_hidden_state[:, 0]
            h = self.gru(torch.cat([*views, words, ego.flatten(1)], dim=1), hidden)
            steps = self.head(h).view(-1, modes, points, dims)
            return steps.cumsum(2), torch.softmax(self.score(h), dim=-1), h

    return TextDriving()


def build_text_policy(seed: int = 0, word_vocab: bool = True) -> Built:
    import torch

    torch.manual_seed(seed)
    spec = text_spec(word_vocab=word_vocab)
    return Built(_text_module(spec).eval(), spec, _example(spec, seed))


def text_factory():
    return build_text_policy().module


def text_factory_tokenizer():
    """The text policy whose spec leaves the text to tokenizer.json (vla-export --tokenizer)."""
    return build_text_policy(word_vocab=False).module


BUILDERS = {"act": build_act, "diffusion": build_diffusion, "diffusion-stages": build_diffusion_staged,
            "text": build_text_policy}


def spec_json(built: Built) -> str:
    return json.dumps(built.spec)
