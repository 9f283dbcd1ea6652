"""The shared CLIP backbone used by every stage.

One object owns the open_clip model, its tokenizer and its transforms, so the three never
disagree (open_clip's factory builds them together; we keep them together).

Models come from open_clip's registry: its own architectures (``ViT-B-32``, ``ViT-B-16``,
``ViT-L-14``, ``RN50``, ...) plus this project's small CPU configs in ``model_configs/``
(``perceptlab-vit-tiny-64``, ``perceptlab-vit-small-64``), registered on import.

Weights (``pretrained``):
    * ``None`` -- random initialisation (the only sensible choice for the toy world);
    * an open_clip tag such as ``"openai"`` or ``"laion2b_s34b_b79k"`` -- needs the file in
      open_clip's cache (``cache_dir``) or network access at run time;
    * a path to a local weights file (``.pt``/``.bin``/``.safetensors``) -- the way that works
      offline: download once, point ``pretrained`` at the file.

The vision tower alone travels between stages: :meth:`CLIPBackbone.save_visual` writes it and
:meth:`CLIPBackbone.load_visual` reads it back from that file, from a Lightning checkpoint of any
stage, or from a plain (full CLIP) state dict, copying only ``visual.*`` tensors.
"""
from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms as T

from perceptlab.core.hf_clip import is_hf_clip_source, open_clip_config_from_hf, open_clip_state_from_hf, read_hf_clip
from perceptlab.core.lora import copy_into_adapted, has_lora, merge_lora, merge_lora_state_dict
from perceptlab.core.transforms import MODEL_CONFIG_DIR, register_model_config, uint8_transform

log = logging.getLogger(__name__)

VISUAL_FILE_FORMAT = "perceptlab-visual-v1"

# Text-tower attributes of open_clip's CLIP class (CustomTextCLIP keeps them all under `.text`).
_TEXT_ATTRS = ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection")


@dataclass
class LoadReport:
    """What :meth:`CLIPBackbone.load_visual` did, tensor by tensor (names without ``visual.``)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"loaded {len(self.loaded)} visual tensors from {self.source}"
        if self.missing:
            text += f"; missing (kept at init): {', '.join(self.missing)}"
        if self.unexpected:
            text += f"; unexpected (ignored): {', '.join(self.unexpected)}"
        return text


def list_models() -> list[str]:
    """Every architecture name the backbone can build (open_clip's plus this project's)."""
    return open_clip.list_models()


def extract_visual_state(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Return the ``visual.*`` tensors of any state dict, keyed without the ``visual.`` prefix.

    Accepts a Lightning checkpoint (``{"state_dict": ...}``, keys like
    ``backbone.model.visual.conv1.weight``), an open_clip checkpoint (``{"state_dict": ...}`` with
    ``module.`` prefixes), a plain state dict, or a file written by ``save_visual``. The prefix is
    cut at the first key segment named ``visual``.
    """
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        parts = key.split(".")
        if "visual" not in parts[:-1]:
            continue
        out[".".join(parts[parts.index("visual") + 1 :])] = value
    return out


class CLIPBackbone(nn.Module):
    """An open_clip CLIP model with its tokenizer and transforms.

    Args:
        model_name: open_clip architecture (``ViT-B-32``) or one of ``model_configs/*.json``.
        pretrained: ``None``, an open_clip tag, or a local weights file (see module docstring).
        vision_only: drop the text tower after building (stage 1 needs no text in memory).
        cache_dir: where open_clip looks for tagged weights.
        force_image_size: override the config's input resolution.
        patch_dropout: FLIP-style patch dropout rate during training (ViTs only).

    Embeddings from :meth:`encode_image` / :meth:`encode_text` are L2-normalised, shape
    ``(batch, embed_dim)``.
    """

    def __init__(
        self,
        model_name: str | None = "perceptlab-vit-tiny-64",
        pretrained: str | None = None,
        vision_only: bool = False,
        cache_dir: str | None = None,
        force_image_size: int | None = None,
        patch_dropout: float | None = None,
    ) -> None:
        super().__init__()
        hf_state = None
        if pretrained and is_hf_clip_source(pretrained):
            # transformers CLIP weights: build the open_clip architecture they describe, then load them
            hf_config, hf_state = read_hf_clip(pretrained)
            derived = open_clip_config_from_hf(hf_config, hf_state)
            if model_name is None:
                model_name = register_model_config(f"hf-{Path(str(pretrained)).name}", derived)
            else:
                _check_same_architecture(model_name, derived, pretrained)
        elif model_name is None:
            raise ValueError("model_name is required unless pretrained is a transformers CLIP folder or file "
                             "(then the architecture is read from it)")
        if model_name not in open_clip.list_models() and not model_name.startswith(("hf-hub:", "local-dir:")):
            raise ValueError(
                f"unknown model_name {model_name!r}: not an open_clip architecture nor a config in "
                f"{MODEL_CONFIG_DIR} (see perceptlab.core.backbone.list_models())"
            )
        if hf_state is None and pretrained and _looks_like_path(pretrained) and not Path(pretrained).expanduser().is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {pretrained}")
        self.model_name = model_name
        self.pretrained = pretrained
        kwargs: dict[str, Any] = {}
        if force_image_size:
            kwargs["force_image_size"] = force_image_size
        if patch_dropout is not None:
            kwargs["force_patch_dropout"] = patch_dropout
        # open_clip logs a warning when no weights are loaded (pretrained=None): true, and left visible.
        if hf_state is not None:
            tag = None
        else:
            tag = str(Path(pretrained).expanduser()) if pretrained and _looks_like_path(pretrained) else pretrained
        model, self._train_tf, self._eval_tf = open_clip.create_model_and_transforms(
            model_name, pretrained=tag, cache_dir=cache_dir, **kwargs)
        if hf_state is not None:
            _load_hf_weights(model, hf_state, str(pretrained))
        self.model = model
        pp = open_clip.get_model_preprocess_cfg(model)
        self.image_mean: tuple[float, ...] = tuple(pp["mean"])
        self.image_std: tuple[float, ...] = tuple(pp["std"])
        size = pp["size"]
        self.image_size: int = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.interpolation: str = pp.get("interpolation", "bicubic")
        # for prepare_images; not in the state dict (they follow from the model config)
        self.register_buffer("_mean", torch.tensor(self.image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.image_std).view(1, -1, 1, 1), persistent=False)
        self.vision_only = vision_only
        self.tokenizer = None if vision_only else open_clip.get_tokenizer(model_name)
        if vision_only:
            self._drop_text_tower()

    # ------------------------------------------------------------------ construction helpers
    def _drop_text_tower(self) -> None:
        m = self.model
        if hasattr(m, "text"):
            m.text = None
        for name in _TEXT_ATTRS:
            if hasattr(m, name):
                setattr(m, name, None)
        if hasattr(m, "attn_mask"):
            m.attn_mask = None

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def has_text(self) -> bool:
        return not self.vision_only

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)

    @property
    def logit_scale(self) -> nn.Parameter:
        """Learnable log temperature of the contrastive logits (open_clip's, init ln(1/0.07))."""
        return self.model.logit_scale

    # ------------------------------------------------------------------------------ transforms
    @property
    def normalize(self) -> T.Normalize:
        """The backbone's per-channel normalisation, applied to tensors in [0, 1]."""
        return T.Normalize(self.image_mean, self.image_std)

    def transform(self, train: bool = False, normalize: bool = True, uint8: bool = False) -> T.Compose:
        """open_clip's train or eval transform; ``normalize=False`` stops at a [0, 1] tensor,
        ``uint8=True`` at a ``uint8`` tensor that :meth:`encode_image` normalises itself.

        The eval transform is DreamSim's preprocessing: bicubic resize to the model's size,
        centre crop, tensor, normalisation.
        """
        tf = self._train_tf if train else self._eval_tf
        if uint8:
            return uint8_transform(tf)
        if normalize:
            return tf
        return T.Compose([t for t in tf.transforms if not isinstance(t, T.Normalize)])

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        """Token ids ``(n, context_length)`` from open_clip's tokenizer for this model."""
        if self.tokenizer is None:
            raise RuntimeError("this backbone was built with vision_only=True: it has no text tower")
        return self.tokenizer(texts)

    # ------------------------------------------------------------------------------- encoders
    def encode_image(self, images: torch.Tensor, normalize: bool = True, layer: int | None = None,
                     tokens: str = "class") -> torch.Tensor:
        """Image embeddings ``(batch, dim)``.

        ``layer=None`` gives the projected embedding (``embed_dim``). ``layer=i`` gives the class
        token after transformer block ``i`` (0-based; negative counts from the end), width of the
        tower; for convolutional towers the spatial mean of stage ``i``; ``tokens="all"``: every
        token of that block, ``(batch, tokens, width)`` (class token first; a conv stage's
        positions). ``images`` are normalised float tensors, or ``uint8`` (:meth:`prepare_images`).
        """
        images = self.prepare_images(images)
        if tokens not in ("class", "all") or (tokens == "all" and (layer is None or normalize)):
            raise ValueError(f"tokens={tokens!r}: 'class', or 'all' with a layer and normalize=False")
        if layer is None:
            feats = self.model.encode_image(images)
        else:
            out = self.model.visual.forward_intermediates(
                images, indices=[layer] if layer >= 0 else [self.num_visual_layers + layer], stop_early=True,
                intermediates_only=True, output_fmt="NLC" if self._is_vit else "NCHW",
                **({"output_extra_tokens": True} if self._is_vit else {}),
            )
            inter, prefix = out["image_intermediates"][0], out.get("image_intermediates_prefix", [None])[0]
            if inter.ndim == 4:
                inter = inter.flatten(2).transpose(1, 2)  # NCHW -> (N, positions, C)
            if tokens == "all":
                return inter if prefix is None else torch.cat([prefix, inter], dim=1)
            feats = prefix[:, 0] if prefix is not None else inter.mean(dim=1)
        return F.normalize(feats, dim=-1) if normalize else feats

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` images ``(n, 3, H, W)`` -> normalised floats in the tower's dtype, on their
        device (what ``ToTensor`` + ``Normalize`` compute, in the same order); others unchanged."""
        if images.dtype != torch.uint8:
            return images
        x = images.float().div_(255).sub_(self._mean.float()).div_(self._std.float())
        dtype = next(self.model.visual.parameters()).dtype
        return x if dtype == x.dtype or torch.is_autocast_enabled(x.device.type) else x.to(dtype)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Text embeddings ``(batch, embed_dim)`` from token ids."""
        if not self.has_text:
            raise RuntimeError("this backbone was built with vision_only=True: it has no text tower")
        return self.model.encode_text(tokens, normalize=normalize)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor | None = None):
        image = self.encode_image(images)
        if tokens is None:
            return image
        return image, self.encode_text(tokens), self.logit_scale.exp()

    @property
    def _is_vit(self) -> bool:
        return hasattr(self.model.visual, "transformer")

    @property
    def num_visual_layers(self) -> int:
        """Number of transformer blocks (ViT) or stages (ResNet) of the vision tower."""
        visual = self.model.visual
        if self._is_vit:
            return len(visual.transformer.resblocks)
        return len([n for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(visual, n)])

    # ------------------------------------------------------------------ visual tower save/load
    def save_visual(self, path: str | os.PathLike) -> Path:
        """Write the vision tower alone (keys ``visual.*``) with the architecture name.

        LoRA adapters are merged into a copy of the tower first (the tower itself keeps its
        adapters and can go on training), so the file always has open_clip's plain keys.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        visual = merge_lora(self.model.visual) if has_lora(self.model.visual) else self.model.visual
        state = {f"visual.{k}": v.detach().cpu() for k, v in visual.state_dict().items()}
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save({"format": VISUAL_FILE_FORMAT, "model_name": self.model_name, "state_dict": state}, tmp)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written file under `path`
        return path

    def load_visual(self, source: str | os.PathLike | Mapping[str, Any], strict: bool = False) -> LoadReport:
        """Copy ``visual.*`` tensors from ``source`` into this backbone's vision tower.

        ``source`` is a path (Lightning checkpoint, open_clip checkpoint, ``save_visual`` file, or
        plain state dict) or an already loaded mapping. Tensors of the text tower and everything
        else are never touched. A tensor whose shape differs raises ``ValueError`` naming it;
        missing/unexpected tensors are listed in the report (and raise when ``strict``).
        """
        name = str(source) if not isinstance(source, Mapping) else "<state dict>"
        if not isinstance(source, Mapping):
            path = Path(source).expanduser()
            if path.is_dir() and is_hf_clip_source(path):
                source = read_hf_clip(path)[1]
            elif not path.is_file():
                raise FileNotFoundError(f"visual weights not found: {path}")
            else:
                from perceptlab.core.safe_load import load_file

                source = load_file(path, mmap=False)
                if not isinstance(source, Mapping):
                    raise ValueError(f"{path}: not a checkpoint or state dict (a {type(source).__name__})")
        inner = source["state_dict"] if isinstance(source.get("state_dict"), Mapping) else source
        if is_hf_clip_source(inner):  # transformers CLIP keys: open_clip's first
            source = open_clip_state_from_hf(inner)
        incoming = extract_visual_state(source)
        if not incoming:
            raise ValueError(f"{name} holds no 'visual.*' tensors: is it a CLIP or perceptlab checkpoint?")
        # This tower may carry LoRA adapters already (a module adapts before it loads): load into
        # a plain copy, then copy that into the adapted tower's base weights. Re-expressing the
        # attention builds layers, whose default initialisation would draw from the global random
        # generator: loading a file must not change the random numbers a run draws afterwards.
        adapted = self.model.visual if has_lora(self.model.visual) else None
        rng = torch.random.fork_rng(devices=[]) if adapted is not None or any(".lora_A." in k for k in incoming) else nullcontext()
        with rng:
            return self._load_incoming(incoming, name, strict, adapted)

    def _load_incoming(self, incoming: dict[str, torch.Tensor], name: str, strict: bool,
                       adapted: nn.Module | None) -> LoadReport:
        plain = merge_lora(adapted) if adapted is not None else self.model.visual
        if any(".lora_A." in k for k in incoming):
            # a LoRA-adapted tower (stage-1 LoRA variant, perceptual tasks): fold the adapters in
            incoming = merge_lora_state_dict(incoming, like=plain)
        target = plain.state_dict()
        report = LoadReport(source=name)
        mismatched = [
            f"visual.{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
            for k, v in incoming.items()
            if k in target and tuple(v.shape) != tuple(target[k].shape)
        ]
        if mismatched:
            raise ValueError(
                f"shape mismatch loading {name} into {self.model_name}: " + "; ".join(mismatched)
            )
        report.loaded = sorted(k for k in incoming if k in target)
        report.missing = sorted(k for k in target if k not in incoming)
        report.unexpected = sorted(k for k in incoming if k not in target)
        if strict and (report.missing or report.unexpected):
            raise ValueError(f"strict visual load failed: {report}")
        with torch.no_grad():
            for k in report.loaded:
                target[k].copy_(incoming[k].to(dtype=target[k].dtype))
        if adapted is not None:
            copy_into_adapted(plain, adapted)
        log.info("%s", report)
        return report


def _check_same_architecture(model_name: str, derived: Mapping[str, Any], source) -> None:
    """A named architecture must be the one the transformers weights describe (open_clip's
    ``ViT-B-32`` uses GELU; OpenAI's weights on the hub need ``ViT-B-32-quickgelu``)."""
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        return  # unknown names are refused below
    mine = (bool(cfg.get("quick_gelu", False)), cfg["vision_cfg"].get("width"), cfg["vision_cfg"].get("layers"),
            cfg["vision_cfg"].get("patch_size"))
    theirs = (bool(derived.get("quick_gelu", False)), derived["vision_cfg"]["width"], derived["vision_cfg"]["layers"],
              derived["vision_cfg"]["patch_size"])
    if mine != theirs:
        raise ValueError(f"{source} is a CLIP with (quick_gelu, width, layers, patch) = {theirs}, but model_name "
                         f"{model_name!r} is {mine}: use the matching name or model_name: null (read from the weights)")


def _load_hf_weights(model: nn.Module, hf_state: Mapping[str, torch.Tensor], source: str) -> None:
    """transformers CLIP weights into an open_clip model: both towers strictly, or the vision tower
    alone (a ``CLIPVisionModel[WithProjection]``; the text tower keeps its random initialisation)."""
    state = open_clip_state_from_hf(hf_state)
    if "logit_scale" in state:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    if any(not k.startswith("visual.") for k in state):
        model.load_state_dict(state, strict=True)
        return
    target = model.visual.state_dict()
    missing = sorted(k for k in target if f"visual.{k}" not in state)
    if missing:
        log.info("%s: vision tower without %s (kept at init); the text tower is not in the file", source,
                 ", ".join(missing))
    model.visual.load_state_dict({k[len("visual."):]: v for k, v in state.items()}, strict=False)


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt")) or Path(value).expanduser().exists()
