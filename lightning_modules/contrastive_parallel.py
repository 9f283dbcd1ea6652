"""Stage 2 on many devices and at speed: FSDP2 sharding, compiled blocks, TF32, gradient clipping
under FSDP1, and the full model gathered from any wrapper.

A mixin of :class:`perceptlab.lightning_modules.contrastive.ContrastivePretrainModule` (its
``backbone`` and the hparams ``compile``, ``matmul_precision``, ``grad_clip_norm``).

* FSDP2 (``ModelParallelStrategy`` with ``data_parallel_size`` = world size,
  ``tensor_parallel_size: 1``): ``configure_model`` applies ``fully_shard`` to every transformer
  block, each tower and the model, and registers ``encode_image`` / ``encode_text`` so that calls
  outside ``forward`` (zero-shot, probes) gather the root's parameters.
* ``compile``: ``torch.compile`` of every transformer block, in place (state-dict keys unchanged).
* ``matmul_precision``: ``torch.set_float32_matmul_precision`` for the fit, restored after it.
* Parameter names: wrappers insert segments (``_fsdp_wrapped_module.``, ...); ``canonical_name``
  removes them, so weight-decay exclusions are decided on the model's own names.
"""
from __future__ import annotations

import torch
from torch import nn

# Wrapper segments distributed/compiled modules insert into parameter names.
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a possibly sharded one (FSDP2 DTensor; a collective then)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def canonical_name(name: str) -> str:
    """A parameter's name without the segments distributed/compiled wrappers insert."""
    for segment in _WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


class ContrastiveParallel:
    """Sharding, compilation and speed settings of the contrastive stage (see the module docstring)."""

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.hparams.get("matmul_precision"):
            self._matmul_precision_before = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision(self.hparams.matmul_precision)

    def teardown(self, stage: str) -> None:
        before = getattr(self, "_matmul_precision_before", None)
        if stage == "fit" and before is not None:  # a process-wide setting: put back what was there
            torch.set_float32_matmul_precision(before)
            self._matmul_precision_before = None
        super().teardown(stage)

    def configure_model(self) -> None:
        if self._configured:
            return
        self._configured = True
        mesh = self.device_mesh
        if mesh is not None:
            self._fully_shard(mesh)
        if self.hparams.compile:
            for block in self._blocks():
                block.compile()  # in place: parameter names and state-dict keys stay the same

    def _blocks(self) -> list[nn.Module]:
        model = self.backbone.model
        blocks = list(getattr(getattr(model.visual, "transformer", None), "resblocks", []))
        text = getattr(model, "transformer", None) or getattr(getattr(model, "text", None), "transformer", None)
        blocks += list(getattr(text, "resblocks", []))
        return blocks

    def _fully_shard(self, mesh) -> None:
        """FSDP2: shard every transformer block, each tower, then the rest of the model."""
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        names = mesh.mesh_dim_names or ()
        if "tensor_parallel" in names and mesh["tensor_parallel"].size() != 1:
            raise ValueError(
                "ContrastivePretrainModule shards data-parallel only: use ModelParallelStrategy with "
                "tensor_parallel_size=1 and data_parallel_size = number of processes"
            )
        dp_mesh = mesh["data_parallel"] if "data_parallel" in names else mesh
        model = self.backbone.model
        for block in self._blocks():
            fully_shard(block, mesh=dp_mesh)
        fully_shard(model.visual, mesh=dp_mesh)
        if getattr(model, "text", None) is not None:
            fully_shard(model.text, mesh=dp_mesh)
        fully_shard(model, mesh=dp_mesh)
        # Methods other than forward() must gather the root's parameters too (zero-shot, probes).
        register_fsdp_forward_method(model, "encode_image")
        register_fsdp_forward_method(model, "encode_text")
        if hasattr(model.visual, "forward_intermediates"):
            register_fsdp_forward_method(model.visual, "forward_intermediates")

    def full_model_state(self) -> dict[str, torch.Tensor]:
        """The open_clip model's full state dict on the CPU, on rank zero (empty elsewhere), through
        torch's strategy-agnostic reader (DDP's wrapper, FSDP1's flat parameters, FSDP2's shards
        gathered). A collective: every rank calls it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.trainer.strategy.model,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        prefix = "backbone.model."
        return {k[len(prefix):]: v.detach().cpu() for k, v in full.items() if k.startswith(prefix)}

    def _clip_gradients(self, optimizer) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        strategy = self.trainer.strategy
        if isinstance(strategy, FSDPStrategy):
            # FSDP1 shards gradients: only the wrapped root can compute their global norm.
            strategy.model.clip_grad_norm_(self.hparams.grad_clip_norm)
        else:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip_norm,
                                gradient_clip_algorithm="norm")
