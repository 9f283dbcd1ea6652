"""LoRA adapters for open_clip towers, through peft.

Why the attention is re-expressed before LoRA is injected
---------------------------------------------------------
open_clip's ViT blocks (``open_clip.transformer.ResidualAttentionBlock.attn``) are
``nn.MultiheadAttention`` modules whose query/key/value projections live in one fused parameter,
``in_proj_weight`` of shape ``(3 * width, width)``, which ``MultiheadAttention.forward`` hands to
``F.multi_head_attention_forward`` directly. peft 0.21 offers two ways into such a layer, and
neither gives what the perceptual-task recipe (rank 16, alpha 8, dropout 0.1 on q, k and v)
specifies:

* targeting ``attn`` (peft's ``lora.MultiheadAttention``) puts *one* rank-r adapter on the fused
  ``in_proj_weight`` -- q, k and v share the down-projection ``A`` -- *and* an adapter on
  ``out_proj`` that cannot be switched off; it merges the delta into the weights before every
  forward, so ``lora_dropout`` is silently never applied;
* ``target_parameters=["in_proj_weight"]`` (peft's ``ParamWrapper``) is the same fused rank-r
  delta and refuses ``lora_dropout != 0``.

Targeting ``out_proj`` or the MLP (``c_fc``/``c_proj``) instead would not adapt q, k, v at all.

So :func:`apply_lora` first replaces every ``nn.MultiheadAttention`` by :class:`QKVSplitAttention`,
an exact re-expression of the same computation with four ``nn.Linear`` layers ``q_proj``,
``k_proj``, ``v_proj``, ``out_proj`` (the layout of Hugging Face's ``CLIPAttention``, where the
recipe was defined), copying the weights (outputs agree to float rounding). peft's ordinary
``nn.Linear`` LoRA is then injected in place into ``q_proj``, ``k_proj`` and ``v_proj``: three
independent rank-r adapters per block, with dropout on each adapter's input, and every peft
feature for Linear layers (merge, dtype casting, state dicts) applies. The LoRA arithmetic is
entirely peft's; only the attention re-expression is written here, because neither open_clip nor
peft provides it.

The wrapped module keeps its class and call signature (a ``VisionTransformer`` stays one:
``visual(x)`` and ``visual.forward_intermediates(...)`` work unchanged), because adapters are
injected with ``peft.inject_adapter_in_model`` rather than wrapping the tower in a ``PeftModel``.
Every non-LoRA parameter of the module is frozen, the visual projection ``proj`` included.

:func:`merge_lora` folds the adapters into plain weights and turns each
:class:`QKVSplitAttention` back into an ``nn.MultiheadAttention`` with a fused ``in_proj_weight``,
so the result has open_clip's own state-dict keys and ``CLIPBackbone.load_visual`` (or open_clip
itself) reads it. :func:`merge_lora_state_dict` does the same for a saved state dict of an adapted
tower (a Lightning checkpoint of a LoRA run), given an un-adapted module of the same architecture.

Parameter count: each adapted ``nn.Linear(d_in, d_out)`` gains ``rank * (d_in + d_out)``
parameters, so a ViT of width ``w`` and ``L`` blocks gains ``6 * rank * w * L`` with the default
targets (ViT-L/14: 6 * 16 * 1024 * 24 = 2,359,296).
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")

# Stored in the adapted module's state dict, so a checkpoint says how to merge its own adapters
# (peft keeps the scaling alpha / rank as a plain attribute, which state dicts do not carry).
SCALING_BUFFER = "lora_scaling"


class QKVSplitAttention(nn.Module):
    """``nn.MultiheadAttention`` with separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linears.

    Same call signature and results as the module it was built from (``forward`` returns
    ``(output, attention_weights_or_None)``; boolean masks mean "masked" where ``True``, float masks
    are added to the logits). Built with :meth:`from_mha`, turned back with :meth:`to_mha`.
    """

    def __init__(self, embed_dim: int, num_heads: int, kdim: int, vdim: int, dropout: float, bias: bool,
                 batch_first: bool) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.kdim, self.vdim = embed_dim, num_heads, kdim, vdim
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "QKVSplitAttention":
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("QKVSplitAttention does not reproduce add_bias_kv / add_zero_attn attention")
        bias = mha.in_proj_bias is not None
        new = cls(mha.embed_dim, mha.num_heads, mha.kdim, mha.vdim, mha.dropout, bias, mha.batch_first)
        ref = mha.out_proj.weight
        new.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                wq, wk, wv = mha.in_proj_weight.chunk(3, dim=0)
            else:
                wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            new.q_proj.weight.copy_(wq)
            new.k_proj.weight.copy_(wk)
            new.v_proj.weight.copy_(wv)
            if bias:
                bq, bk, bv = mha.in_proj_bias.chunk(3, dim=0)
                new.q_proj.bias.copy_(bq)
                new.k_proj.bias.copy_(bk)
                new.v_proj.bias.copy_(bv)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def to_mha(self) -> nn.MultiheadAttention:
        """The equivalent ``nn.MultiheadAttention`` (adapters must have been merged first)."""
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            if not type(getattr(self, name)) is nn.Linear:
                raise ValueError(f"{name} still carries adapters: merge them before converting back")
        bias = self.q_proj.bias is not None
        ref = self.out_proj.weight
        mha = nn.MultiheadAttention(self.embed_dim, self.num_heads, dropout=self.dropout, bias=bias,
                                    kdim=self.kdim, vdim=self.vdim, batch_first=self.batch_first,
                                    device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                mha.in_proj_weight.copy_(torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]))
            else:
                mha.q_proj_weight.copy_(self.q_proj.weight)
                mha.k_proj_weight.copy_(self.k_proj.weight)
                mha.v_proj_weight.copy_(self.v_proj.weight)
            if bias:
                mha.in_proj_bias.copy_(torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]))
                mha.out_proj.bias.copy_(self.out_proj.bias)
            mha.out_proj.weight.copy_(self.out_proj.weight)
        mha.train(self.training)
        return mha

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            batch_first = False
        else:
            batch_first = self.batch_first
        if not batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, lq, _ = query.shape
        ls = key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).view(n, lq, h, d).transpose(1, 2)
        k = self.k_proj(key).view(n, ls, h, d).transpose(1, 2)
        v = self.v_proj(value).view(n, ls, h, d).transpose(1, 2)
        mask = _additive_mask(attn_mask, key_padding_mask, n, h, lq, ls, q.dtype)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            logits = (q @ k.transpose(-2, -1)) / d**0.5
            if mask is not None:
                logits = logits + mask
            elif is_causal:
                logits = logits.masked_fill(torch.ones(lq, ls, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
            # returned weights are after dropout, as nn.MultiheadAttention returns them
            probs = F.dropout(logits.softmax(dim=-1), p=p, training=self.training)
            out = probs @ v
            weights = probs.mean(dim=1) if average_attn_weights else probs
            if unbatched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                 is_causal=is_causal and mask is None)
        out = self.out_proj(out.transpose(1, 2).reshape(n, lq, h * d))
        if not batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        return out, weights


def _additive_mask(attn_mask, key_padding_mask, n, h, lq, ls, dtype) -> torch.Tensor | None:
    """nn.MultiheadAttention's mask conventions as one additive float mask ``(n|1, h|1, lq, ls)``."""

    def additive(mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        return mask.to(dtype)

    out = None
    if attn_mask is not None:
        m = additive(attn_mask)
        out = m.view(1, 1, lq, ls) if m.dim() == 2 else m.view(n, h, lq, ls)
    if key_padding_mask is not None:
        m = additive(key_padding_mask).view(n, 1, 1, ls)
        out = m if out is None else out + m
    return out


def split_attention(module: nn.Module) -> int:
    """Replace every ``nn.MultiheadAttention`` inside ``module`` by a :class:`QKVSplitAttention`.

    Returns how many were replaced. ``module`` itself may not be the attention layer.
    """
    targets = [name for name, m in module.named_modules() if isinstance(m, nn.MultiheadAttention) and name]
    for name in targets:
        module.set_submodule(name, QKVSplitAttention.from_mha(module.get_submodule(name)))
    return len(targets)


def fuse_attention(module: nn.Module) -> int:
    """Inverse of :func:`split_attention`; returns how many layers were turned back."""
    targets = [name for name, m in module.named_modules() if isinstance(m, QKVSplitAttention) and name]
    for name in targets:
        module.set_submodule(name, module.get_submodule(name).to_mha())
    return len(targets)


def has_lora(module: nn.Module) -> bool:
    """Whether ``module`` carries peft LoRA layers."""
    return any(isinstance(m, LoraLayer) for m in module.modules())


def apply_lora(
    module: nn.Module,
    rank: int = 16,
    alpha: float = 8,
    dropout: float = 0.1,
    target_modules: Sequence[str] | str | None = None,
) -> nn.Module:
    """Inject LoRA adapters into ``module`` in place and freeze everything else; returns ``module``.

    Args:
        module: an open_clip tower (``model.visual``) or any module containing
            ``nn.MultiheadAttention`` / ``nn.Linear`` layers.
        rank: LoRA rank r.
        alpha: LoRA alpha; the update is scaled by ``alpha / rank``.
        dropout: dropout probability on each adapter's input (training only).
        target_modules: peft's ``target_modules`` (names matched as suffixes, or a regex string).
            ``None`` means the query, key and value projections of every attention layer
            (``q_proj``, ``k_proj``, ``v_proj`` after the split described in the module
            docstring). ``out_proj``, ``c_fc`` and ``c_proj`` are also valid names.

    Raises ``ValueError`` if ``module`` already has adapters or no layer matches the targets.
    """
    if has_lora(module):
        raise ValueError("module already carries LoRA adapters; merge_lora() it first or adapt a fresh copy")
    if rank <= 0:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank}")
    was_training = module.training
    split_attention(module)
    targets = list(DEFAULT_TARGETS) if target_modules is None else target_modules
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    try:
        inject_adapter_in_model(config, module)
    except ValueError as err:
        fuse_attention(module)
        raise ValueError(f"no LoRA target {targets!r} found in {type(module).__name__}: {err}") from err
    # peft creates its layers (and their dropout) in training mode whatever the module's mode.
    module.train(was_training)
    ref = next(module.parameters())
    module.register_buffer(SCALING_BUFFER, torch.tensor(float(alpha) / rank, device=ref.device))
    return module


def lora_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every LoRA adapter weight in ``module``."""
    return [(n, p) for n, p in module.named_parameters() if ".lora_" in f".{n}"]


def lora_parameter_count(module: nn.Module) -> int:
    """Number of scalar LoRA parameters in ``module`` (``rank * (d_in + d_out)`` per adapted Linear)."""
    return sum(p.numel() for _, p in lora_parameters(module))


def merge_lora(module: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold the LoRA adapters into plain weights with peft's merge; returns the plain module.

    Each adapted Linear becomes ``W + (alpha / rank) * B @ A``, the attention layers become
    ``nn.MultiheadAttention`` again, and the scaling buffer is dropped: the result's state dict
    has exactly the keys of the un-adapted architecture. All its parameters are trainable
    (``requires_grad=True``), as in a freshly built model.

    ``inplace=False`` (default) merges a deep copy and leaves ``module`` adapted, so a run can
    export its tower (``CLIPBackbone.save_visual`` on the copy) and keep training. A module
    without adapters is returned as is (copied unless ``inplace``).
    """
    out = module if inplace else copy.deepcopy(module)
    # safe_merge: raise rather than write NaNs into the exported weights.
    layers = [(name, m) for name, m in out.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in layers:
        layer.merge(safe_merge=True)
        base = layer.get_base_layer()
        if name:
            out.set_submodule(name, base)
        else:
            out = base
    fuse_attention(out)
    if SCALING_BUFFER in out._buffers:
        del out._buffers[SCALING_BUFFER]
    for p in out.parameters():
        p.requires_grad_(True)
    return out


def merge_lora_state_dict(state: Mapping[str, torch.Tensor], like: nn.Module) -> dict[str, torch.Tensor]:
    """Plain state dict of ``like``'s architecture from the state dict of an adapted copy of it.

    ``state`` is what an adapted module's ``state_dict()`` held (for instance the ``visual.*``
    tensors of a Lightning checkpoint of a LoRA run, prefix removed); ``like`` is an un-adapted
    module of the same architecture (only its structure is used; it is not modified). Rank,
    targets and scaling are read from ``state``. A state dict without adapters is returned as is.
    """
    a_keys = [k for k in state if ".lora_A." in k]
    if not a_keys:
        return dict(state)
    if SCALING_BUFFER not in state:
        raise ValueError(f"adapted state dict lacks '{SCALING_BUFFER}': it was not written by apply_lora()")
    ranks = {int(state[k].shape[0]) for k in a_keys}
    if len(ranks) != 1:
        raise ValueError(f"adapters of different ranks {sorted(ranks)} in one state dict are not supported")
    rank = ranks.pop()
    targets = sorted({k.split(".lora_A.")[0].rsplit(".", 1)[-1] for k in a_keys})
    alpha = float(state[SCALING_BUFFER]) * rank
    adapted = apply_lora(copy.deepcopy(like), rank=rank, alpha=alpha, dropout=0.0, target_modules=targets)
    adapted.load_state_dict(state, strict=True)
    return merge_lora(adapted, inplace=True).state_dict()


def copy_into_adapted(plain: nn.Module, adapted: nn.Module) -> None:
    """Copy the weights of ``plain`` (an un-adapted tower) into the base weights of ``adapted``.

    ``adapted`` is the same architecture after :func:`apply_lora`; its adapters and scaling are
    left as they are, so a tower adapted with fresh (``B = 0``) adapters then computes exactly what
    ``plain`` computes. This is how a checkpoint's tower is loaded into a module that has already
    been adapted (``init_visual_from``).
    """
    split = copy.deepcopy(plain)
    split_attention(split)  # in_proj_weight -> q_proj / k_proj / v_proj, as in the adapted tower
    source = split.state_dict()
    with torch.no_grad():
        for key, tensor in adapted.state_dict(keep_vars=True).items():
            if ".lora_" in f".{key}" or key == SCALING_BUFFER:
                continue
            plain_key = key.replace(".base_layer.", ".")
            if plain_key not in source:
                raise KeyError(f"{key}: no tensor {plain_key!r} in the un-adapted tower")
            tensor.copy_(source[plain_key])
