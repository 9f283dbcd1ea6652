"""CLIP weights between open_clip and Hugging Face ``transformers``: configs and state-dict keys.

Neither library converts in both directions (transformers ships a one-way script for OpenAI's
original checkpoints, open_clip none for ``transformers`` models), so the key map is written here,
once, and tested against both libraries run on the same random weights (``tests/test_hf_clip.py``).

The two layouts differ only in names and in three places of substance:

* attention: open_clip's ``nn.MultiheadAttention`` keeps q, k, v fused in ``in_proj_weight``
  (``3 * width`` rows, in that order) and ``in_proj_bias``; transformers keeps ``q_proj``,
  ``k_proj``, ``v_proj`` Linears -- concatenated / split exactly;
* projections: open_clip's ``visual.proj`` and ``text_projection`` are ``(width, embed_dim)``
  matrices applied as ``x @ proj``; transformers' ``visual_projection`` / ``text_projection`` are
  bias-free Linears, ``(embed_dim, width)`` weights -- transposed;
* activation: ``quick_gelu`` in the transformers config is open_clip's ``quick_gelu: true``.

Handled models: ``CLIPModel`` (both towers), ``CLIPVisionModel`` and
``CLIPVisionModelWithProjection`` (vision tower; no projection in the former), with or without
an outer prefix (``clip.vision_model...``), from a ``save_pretrained`` folder (``config.json`` +
``model.safetensors`` or ``pytorch_model.bin``) or a state-dict file. Without ``config.json`` the
architecture is read from the tensor shapes (heads: width / 64, CLIP's convention).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

#: Per-block names, transformers -> open_clip (q/k/v handled apart: they are fused).
_BLOCK = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
}
_VISION = {
    "embeddings.class_embedding": "class_embedding",
    "embeddings.patch_embedding.weight": "conv1.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "pre_layrnorm.weight": "ln_pre.weight", "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight", "post_layernorm.bias": "ln_post.bias",
}
_TEXT = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias",
}
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


# ------------------------------------------------------------------------------- detection
def is_hf_clip_source(source: str | os.PathLike | Mapping | None) -> bool:
    """Whether ``source`` (a folder, a file or a loaded state dict) holds transformers CLIP weights."""
    if source is None:
        return False
    if isinstance(source, Mapping):
        return any(isinstance(v, torch.Tensor) for v in source.values()) and (
            _tower_prefix(source, "embeddings.class_embedding") is not None
            or _tower_prefix(source, "embeddings.token_embedding.weight") is not None)
    path = Path(source).expanduser()
    if path.is_dir():
        return (path / "config.json").is_file() and any((path / f).is_file() for f in HF_WEIGHT_FILES)
    if path.is_file() and path.suffix in (".safetensors", ".bin"):
        return is_hf_clip_source(_read_state(path))
    return False


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    from perceptlab.core.safe_load import load_file

    state = load_file(path, mmap=False)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def read_hf_clip(source: str | os.PathLike | Mapping) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    """``(config dict or None, state dict)`` of a transformers CLIP folder, file or state dict."""
    if isinstance(source, Mapping):
        return None, dict(source)
    path = Path(source).expanduser()
    if path.is_dir():
        weights = next((path / f for f in HF_WEIGHT_FILES if (path / f).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{path}: no {' or '.join(HF_WEIGHT_FILES)} (a transformers save_pretrained folder)")
        return json.loads((path / "config.json").read_text()), _read_state(weights)
    if not path.is_file():
        raise FileNotFoundError(f"transformers CLIP weights not found: {path}")
    return None, _read_state(path)


# --------------------------------------------------------------------------------- configs
def open_clip_config_from_hf(config: Mapping[str, Any] | None, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """An open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, ``quick_gelu``) for
    transformers CLIP weights, from ``config.json`` where given, else from the tensor shapes."""
    state = _strip_outer_prefix(state)
    config = dict(config or {})
    vision = dict(config.get("vision_config") or (config if config.get("model_type") == "clip_vision_model" else {}))
    text = dict(config.get("text_config") or {})
    pos = state["vision_model.embeddings.position_embedding.weight"]
    patch = state["vision_model.embeddings.patch_embedding.weight"]
    width = int(vision.get("hidden_size", pos.shape[1]))
    patch_size = int(vision.get("patch_size", patch.shape[-1]))
    grid = int(round((pos.shape[0] - 1) ** 0.5))
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k)))
    heads = int(vision.get("num_attention_heads", max(1, width // 64)))
    mlp = state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    vision_cfg = {"image_size": int(vision.get("image_size", grid * patch_size)), "layers": layers, "width": width,
                  "head_width": width // heads, "mlp_ratio": mlp / width, "patch_size": patch_size}
    if "visual_projection.weight" in state:
        embed_dim = int(state["visual_projection.weight"].shape[0])
    elif "text_projection.weight" in state:
        embed_dim = int(state["text_projection.weight"].shape[0])
    else:
        embed_dim = int(config.get("projection_dim", width))
    out: dict[str, Any] = {"embed_dim": embed_dim, "vision_cfg": vision_cfg}
    if "text_model.embeddings.token_embedding.weight" in state:
        tok = state["text_model.embeddings.token_embedding.weight"]
        tpos = state["text_model.embeddings.position_embedding.weight"]
        t_layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k)))
        t_width = int(tok.shape[1])
        out["text_cfg"] = {
            "context_length": int(tpos.shape[0]), "vocab_size": int(tok.shape[0]), "width": t_width,
            "heads": int(text.get("num_attention_heads", max(1, t_width // 64))), "layers": t_layers,
            "mlp_ratio": state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0] / t_width,
        }
    else:  # a vision-only model: a text tower of CLIP's shape, left at its random initialisation
        out["text_cfg"] = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
    act = vision.get("hidden_act", text.get("hidden_act", "quick_gelu" if not config else "gelu"))
    if act == "quick_gelu":
        out["quick_gelu"] = True
    return out


def hf_config_from_open_clip(model_cfg: Mapping[str, Any]):
    """A ``transformers.CLIPConfig`` for an open_clip ViT + transformer-text model config."""
    from transformers import CLIPConfig

    v, t = dict(model_cfg["vision_cfg"]), dict(model_cfg["text_cfg"])
    if not isinstance(v.get("layers"), int) or v.get("timm_model_name") or t.get("hf_model_name"):
        raise ValueError("export to transformers supports open_clip ViT image towers with CLIP's text transformer; "
                         f"this config is not one: vision_cfg={v}, text_cfg={t}")
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    width, t_width = int(v["width"]), int(t.get("width", 512))
    vocab = int(t.get("vocab_size", 49408))
    return CLIPConfig(
        projection_dim=int(model_cfg["embed_dim"]),
        vision_config={"hidden_size": width, "intermediate_size": int(width * v.get("mlp_ratio", 4.0)),
                       "num_hidden_layers": int(v["layers"]), "num_attention_heads": width // int(v.get("head_width", 64)),
                       "image_size": int(v["image_size"]), "patch_size": int(v["patch_size"]), "hidden_act": act},
        text_config={"hidden_size": t_width, "intermediate_size": int(t_width * t.get("mlp_ratio", 4.0)),
                     "num_hidden_layers": int(t.get("layers", 12)), "num_attention_heads": int(t.get("heads", 8)),
                     "max_position_embeddings": int(t.get("context_length", 77)), "vocab_size": vocab,
                     # open_clip pools the text at the highest token id, CLIP's end-of-text token
                     "eos_token_id": vocab - 1, "bos_token_id": vocab - 2, "pad_token_id": 0, "hidden_act": act},
    )


# ------------------------------------------------------------------------------ state dicts
def _tower_prefix(state: Mapping[str, Any], anchor: str) -> str | None:
    """The key prefix of the tower whose embeddings sit at ``<prefix>anchor``, if there is one."""
    key = next((k for k in state if k.endswith(anchor) and (k == anchor or k[-len(anchor) - 1] == ".")), None)
    return None if key is None else key[: -len(anchor)]


def _strip_outer_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as ``CLIPModel`` writes them: ``vision_model.*``, ``text_model.*``, the projections,
    ``logit_scale``. An outer wrapper's prefix (``clip.``, ``model.``) is removed, and so is the
    difference between transformers releases: ``CLIPVisionModel`` keys are ``vision_model.*`` in
    transformers 4 and ``embeddings.*``/``encoder.*`` (the tower's own) in transformers 5."""
    vision = _tower_prefix(state, "embeddings.class_embedding")
    text = _tower_prefix(state, "embeddings.token_embedding.weight")
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if vision is not None and key.startswith(vision) and not (text is not None and key.startswith(text)
                                                                   and len(text) > len(vision)):
            out["vision_model." + key[len(vision):]] = value
        elif text is not None and key.startswith(text):
            out["text_model." + key[len(text):]] = value
        else:
            m = re.search(r"(?:^|\.)(visual_projection\.weight|text_projection\.weight|logit_scale)$", key)
            if m:
                out[m.group(1)] = value
    return out


def _tower_to_open_clip(state: Mapping[str, torch.Tensor], hf_prefix: str, oc_prefix: str,
                        names: Mapping[str, str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if not key.startswith(hf_prefix):
            continue
        rest = key[len(hf_prefix):]
        if rest in names:
            out[oc_prefix + names[rest]] = value
            continue
        m = _LAYER.match(rest)
        if not m:
            continue  # position_ids buffers and the like
        i, name = int(m.group(1)), m.group(2)
        q = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", name)
        if q:
            qkv.setdefault((i, q.group(2)), {})[q.group(1)] = value
            continue
        for hf_name, oc_name in _BLOCK.items():
            if name.startswith(hf_name + "."):
                out[f"{oc_prefix}transformer.resblocks.{i}.{oc_name}{name[len(hf_name):]}"] = value
                break
    for (i, kind), parts in qkv.items():
        out[f"{oc_prefix}transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def open_clip_state_from_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip CLIP keys (``visual.*``, text tower, ``logit_scale``) from transformers CLIP keys."""
    state = _strip_outer_prefix(state)
    out = _tower_to_open_clip(state, "vision_model.", "visual.", _VISION)
    out.update(_tower_to_open_clip(state, "text_model.", "", _TEXT))
    if "visual_projection.weight" in state:
        out["visual.proj"] = state["visual_projection.weight"].t().contiguous()
    if "text_projection.weight" in state:
        out["text_projection"] = state["text_projection.weight"].t().contiguous()
    if "logit_scale" in state:
        out["logit_scale"] = state["logit_scale"]
    return out


def hf_state_from_open_clip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``CLIPModel`` keys from an open_clip CLIP state dict (the inverse of the above)."""
    out: dict[str, torch.Tensor] = {}
    for oc_prefix, hf_prefix, names in (("visual.", "vision_model.", _VISION), ("", "text_model.", _TEXT)):
        inverse = {v: k for k, v in names.items()}
        for key, value in state.items():
            if not key.startswith(oc_prefix) or (oc_prefix == "" and key.startswith("visual.")):
                continue
            rest = key[len(oc_prefix):]
            if rest in inverse:
                out[hf_prefix + inverse[rest]] = value
                continue
            m = re.match(r"^transformer\.resblocks\.(\d+)\.(.+)$", rest)
            if not m:
                continue
            i, name = m.group(1), m.group(2)
            fused = re.match(r"attn\.in_proj_(weight|bias)$", name)
            if fused:
                for letter, part in zip("qkv", value.chunk(3)):
                    out[f"{hf_prefix}encoder.layers.{i}.self_attn.{letter}_proj.{fused.group(1)}"] = part.contiguous()
                continue
            for hf_name, oc_name in _BLOCK.items():
                if name.startswith(oc_name + "."):
                    out[f"{hf_prefix}encoder.layers.{i}.{hf_name}{name[len(oc_name):]}"] = value
                    break
    if "visual.proj" in state:
        out["visual_projection.weight"] = state["visual.proj"].t().contiguous()
    if "text_projection" in state:
        out["text_projection.weight"] = state["text_projection"].t().contiguous()
    if "logit_scale" in state:
        out["logit_scale"] = state["logit_scale"].reshape(())
    return out


# ------------------------------------------------------------------------ PerceptCLIP releases
class PerceptCLIPRelease:
    """A PerceptCLIP release file: a plain state dict of their module, a transformers CLIP vision
    model under peft LoRA on q/k/v (``...q_proj.base_layer.weight``, ``...q_proj.lora_A.<adapter>.weight``),
    the frozen visual projection as ``proj`` and the MLP head ``mlp.fc1``, ``mlp.fc2``, ``mlp.fc3``
    (ReLU and dropout after each hidden layer).

    Attributes: ``vision`` (transformers keys of the un-adapted tower, ``visual_projection.weight``
    included), ``lora`` (``{(layer, "q"|"k"|"v"): (A, B)}``), ``rank``, ``head`` (the Linear
    layers' ``(weight, bias)`` in order), ``hidden`` (the head's hidden sizes) and ``out``.
    The LoRA scale alpha is not in the file (PerceptCLIP's is 8); it is an argument where used.
    """

    def __init__(self, state: Mapping[str, torch.Tensor], source: str = "<state dict>") -> None:
        self.source = source
        vision: dict[str, torch.Tensor] = {}
        lora: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        head: dict[str, torch.Tensor] = {}
        proj = None
        # The tower's prefix ends where its embeddings start (``vision_model.``, or a peft wrapper's
        # ``model.base_model.model.`` where transformers flattens the vision model's keys).
        anchor = next((k for k in state if k.endswith("embeddings.class_embedding")), None)
        prefix = anchor[: -len("embeddings.class_embedding")] if anchor else "\0"
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                continue
            if key.startswith(prefix):
                rest = "vision_model." + key[len(prefix):]
                a = re.match(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.lora_([AB])\.[^.]+\.weight$", rest)
                if a:
                    lora.setdefault((int(a.group(1)), a.group(2)), {})[a.group(3)] = value
                elif ".lora_" not in rest:
                    vision[rest.replace(".base_layer.", ".")] = value
                continue
            h = re.search(r"(?:^|\.)mlp\.(fc\d+)\.(weight|bias)$", key)
            if h:
                head[f"{h.group(1)}.{h.group(2)}"] = value
            elif re.search(r"(?:^|\.)(proj|visual_projection)\.weight$", key):
                proj = value
        if not vision or proj is None or "fc1.weight" not in head:
            raise ValueError(f"{source} is not a PerceptCLIP release: expected vision_model.* tensors, proj.weight "
                             "and the head mlp.fc1/fc2/fc3")
        vision["visual_projection.weight"] = proj
        self.vision = vision
        self.lora = {k: (v["A"], v["B"]) for k, v in lora.items()}
        self.rank = int(next(iter(self.lora.values()))[0].shape[0]) if self.lora else 0
        names = sorted({k.split(".")[0] for k in head}, key=lambda n: int(n[2:]))
        self.head = [(head[f"{n}.weight"], head[f"{n}.bias"]) for n in names]
        self.hidden = [int(w.shape[0]) for w, _ in self.head[:-1]]
        self.out = int(self.head[-1][0].shape[0])

    @classmethod
    def read(cls, path: str | os.PathLike) -> "PerceptCLIPRelease":
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"PerceptCLIP release file not found: {path}")
        return cls(_read_state(path), str(path))

    def merged_vision(self, alpha: float) -> dict[str, torch.Tensor]:
        """The tower's transformers keys with each adapter folded in: ``W + (alpha / r) B A``."""
        out = dict(self.vision)
        for (layer, letter), (a, b) in self.lora.items():
            key = f"vision_model.encoder.layers.{layer}.self_attn.{letter}_proj.weight"
            out[key] = out[key] + (alpha / a.shape[0]) * (b @ a)
        return out
