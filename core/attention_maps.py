"""Where a vision tower looks: saliency maps of its input.

* ``attention`` (default): the last block's attention from the class token to every patch,
  averaged over heads (a ViT; the patch grid).
* ``rollout``: attention rollout (Abnar & Zuidema 2020): each block's head-averaged attention
  with the residual added (``0.5 A + 0.5 I``, rows renormalised), multiplied through the blocks;
  the class token's row, over the patches (a ViT; the patch grid).
* ``gradient``: the gradient of the image embedding's squared norm with respect to the input
  pixels, its absolute value's maximum over the colour channels (Simonyan et al. 2014's vanilla
  gradient, with the embedding's energy as the score, since CLIP has no class to explain; any
  tower; full resolution).

open_clip's blocks call their attention with ``need_weights=False`` (the fused kernel returns no
weights), so the weights are recovered through a hook: the block's own attention module is called
again on the inputs it just received, with ``need_weights=True`` -- the same q and k, the same
(possibly LoRA-adapted) projections, one extra attention computation per hooked block. Towers
without an open_clip ``transformer.resblocks`` (a ResNet, a timm trunk) are refused by name.
"""
from __future__ import annotations

import torch
from torch import nn

METHODS = ("attention", "rollout", "gradient")


def _blocks(visual: nn.Module) -> list[nn.Module]:
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or not len(blocks) or not hasattr(blocks[0], "attn"):
        raise ValueError(f"saliency maps need an open_clip ViT tower (transformer.resblocks); "
                         f"{type(visual).__name__} has none")
    return list(blocks)


def attention_maps(visual: nn.Module, images: torch.Tensor, method: str = "attention") -> torch.Tensor:
    """Normalised images ``(n, 3, S, S)`` -> maps ``(n, gh, gw)`` over the patch grid, or
    ``(n, S, S)`` for ``gradient`` (float32)."""
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "gradient":
        return gradient_maps(visual, images)
    with torch.no_grad():
        return _attention(visual, images, method)


def gradient_maps(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``|d ||f(x)||^2 / dx|``, the maximum over colour channels, ``(n, S, S)``. Runs with gradients
    on even inside ``torch.inference_mode`` (the suite's): the input is a fresh leaf; the weights'
    gradients are not kept."""
    with torch.inference_mode(False), torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        params = [p for p in visual.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            energy = visual(x).float().pow(2).sum()
            (grad,) = torch.autograd.grad(energy, x)
        finally:
            for p in params:
                p.requires_grad_(True)
    return grad.abs().amax(dim=1).float()


def _attention(visual: nn.Module, images: torch.Tensor, method: str) -> torch.Tensor:
    blocks = _blocks(visual)
    hooked = blocks[-1:] if method == "attention" else blocks
    weights: list[torch.Tensor] = []

    def hook(module, args, kwargs, output):
        q = kwargs.get("query", args[0] if args else None)
        k = kwargs.get("key", args[1] if len(args) > 1 else q)
        v = kwargs.get("value", args[2] if len(args) > 2 else k)
        mask = kwargs.get("attn_mask")
        # forward itself, not the module call: the call would run this hook again
        w = module.forward(q, k, v, need_weights=True, attn_mask=mask, average_attn_weights=True)[1]
        weights.append(w.float())

    handles = [b.attn.register_forward_hook(hook, with_kwargs=True) for b in hooked]
    try:
        visual(images)
    finally:
        for h in handles:
            h.remove()
    gh, gw = _grid(visual)
    prefix = weights[-1].shape[-1] - gh * gw  # class token (and any register tokens) first
    if method == "attention":
        cls_row = weights[-1][:, 0, prefix:]
    else:
        eye = torch.eye(weights[0].shape[-1], device=weights[0].device)
        rollout = None
        for w in weights:
            a = 0.5 * w + 0.5 * eye
            a = a / a.sum(dim=-1, keepdim=True)
            rollout = a if rollout is None else a @ rollout
        cls_row = rollout[:, 0, prefix:]
    return cls_row.reshape(-1, gh, gw)


def _grid(visual: nn.Module) -> tuple[int, int]:
    grid = getattr(visual, "grid_size", None)
    if grid is None:
        raise ValueError(f"{type(visual).__name__} has no grid_size: cannot lay its tokens out as patches")
    return (int(grid[0]), int(grid[1])) if isinstance(grid, (tuple, list)) else (int(grid), int(grid))


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Patch-grid maps ``(n, gh, gw)`` -> ``(n, size, size)``, bilinear (each patch's value at its
    centre, as the patches tile the input image); maps already at ``size`` are returned as they are."""
    if maps.shape[-2:] == (size, size):
        return maps.float()
    return torch.nn.functional.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear",
                                           align_corners=False)[:, 0]
