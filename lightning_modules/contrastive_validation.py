"""Stage 2's validation: held-out loss in a fixed order, retrieval recall and zero-shot accuracy.

A mixin of :class:`perceptlab.lightning_modules.contrastive.ContrastivePretrainModule` (which owns
the metric states it fills). Zero-shot classification and retrieval recall are CLIP_benchmark's
(``core.benchmark_metrics``), as in the probes and the benchmark probe.

Validation (every metric higher is better except the loss)
----------------------------------------------------------
On held-out pairs: ``val/loss`` (the contrastive loss over consecutive chunks of the validation
batch size, in the set's order, averaged over pairs: the same for any number of loader workers and
processes, see ``_validation_loss``) and retrieval recall ``val/i2t_R@k`` / ``val/t2i_R@k`` (k = 1, 5, 10; share of images whose paired
caption ranks in the top k among all held-out captions, and the converse; CLIP_benchmark's
``recall_at_k``) over the whole held-out
set, gathered from all ranks. On a labelled image set: zero-shot ``val/zeroshot_top1`` /
``val/zeroshot_top5`` (shares in [0, 1]) with CLIP_benchmark's classifier
(``core.benchmark_metrics.zeroshot_classifier``) over the data module's ``zeroshot_classnames`` and
``zeroshot_templates``. Retrieval recall is CLIP_benchmark's too (ties broken by rank order).
"""
from __future__ import annotations

import torch

from perceptlab.core.benchmark_metrics import paired_retrieval_recall, zeroshot_classifier
from perceptlab.lightning_modules.contrastive_parallel import full_tensor


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """``val/i2t_R@k`` / ``val/t2i_R@k``: CLIP_benchmark's recall (``core.benchmark_metrics``)."""
    return paired_retrieval_recall(image_features.cpu(), text_features.cpu(), ks)


class ContrastiveValidation:
    """Validation hooks of the contrastive stage (see the module docstring)."""

    def on_validation_epoch_start(self) -> None:
        self._zeroshot_weights = None  # the text tower changed: rebuild the class embeddings

    def _zeroshot_classifier(self) -> torch.Tensor:
        if self._zeroshot_weights is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            classnames = getattr(datamodule, "zeroshot_classnames", None)
            templates = getattr(datamodule, "zeroshot_templates", None)
            if not classnames or not templates:
                raise ValueError(
                    "a zero-shot validation batch ({'image', 'label'}) arrived but the data module has no "
                    "zeroshot_classnames / zeroshot_templates (use ImageTextDataModule with zeroshot_data)"
                )
            # Built inside a validation step, so FSDP1 has the root's parameters gathered.
            self._zeroshot_weights = zeroshot_classifier(self.backbone, self.backbone.tokenize, list(classnames),
                                                         list(templates), self.device)
        return self._zeroshot_weights

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(batch, dict) and "label" in batch:
            weights = self._zeroshot_classifier()
            features = self.backbone.encode_image(batch["image"])
            logits = features.float() @ weights.float()
            labels = batch["label"]
            topk = logits.topk(min(5, logits.shape[1]), dim=1).indices
            self.val_zeroshot_top1.update((topk[:, 0] == labels).float())
            self.val_zeroshot_top5.update((topk == labels[:, None]).any(dim=1).float())
            return
        images, tokens, _ = self._unpack(batch)
        image_features, text_features, scale, *bias = self(images, tokens)
        self._val_batch_size = max(self._val_batch_size, images.shape[0])
        if isinstance(batch, dict) and "index" in batch:
            self.val_indices.update(batch["index"].to(self.device, torch.float64))
        else:  # a loader of our own making sends indices; any other: the loss of each batch as it comes
            loss = self.contrastive_loss(image_features, text_features, scale, *bias, loss_fn=self._val_loss_fn)
            self.log("val/loss", loss, sync_dist=True, batch_size=images.shape[0], add_dataloader_idx=False)
        self.val_image_features.update(image_features.float())
        self.val_text_features.update(text_features.float())

    def on_validation_epoch_end(self) -> None:
        if self.val_zeroshot_top1.update_count:
            self.log("val/zeroshot_top1", self.val_zeroshot_top1.compute(), prog_bar=True)
            self.log("val/zeroshot_top5", self.val_zeroshot_top5.compute())
        if self.val_image_features.update_count:
            # CatMetric gathers every rank's features, so each rank ranks against the whole set.
            images, texts = self.val_image_features.compute(), self.val_text_features.compute()
            if self.val_indices.update_count:
                images, texts, loss = self._validation_loss(images, texts, self.val_indices.compute())
                self.log("val/loss", loss)
            recalls = retrieval_recall(images, texts, self.hparams.retrieval_ks)
            for name, value in recalls.items():
                self.log(f"val/{name}", value)
        for metric in (self.val_zeroshot_top1, self.val_zeroshot_top5, self.val_image_features, self.val_text_features,
                       self.val_indices):
            metric.reset()
        self._val_batch_size = 0
        self._zeroshot_weights = None

    def _validation_loss(self, images: torch.Tensor, texts: torch.Tensor, indices: torch.Tensor):
        """The validation set in its own order, each pair once, and its loss.

        Loader workers and processes split the set sample by sample (and pad to equal lengths),
        which changes what shares a batch; a contrastive loss depends on that. Here the pairs
        gathered from all processes are put back in set order (``index``), the padding repeats are
        dropped, and the loss is taken over consecutive chunks of the validation batch size, as one
        process without workers would batch them, and averaged over pairs: the same ``val/loss``
        for any ``num_workers`` and any number of processes (tested).
        """
        order = torch.argsort(indices.flatten(), stable=True)
        sorted_indices = indices.flatten()[order]
        first = torch.ones_like(sorted_indices, dtype=torch.bool)
        first[1:] = sorted_indices[1:] != sorted_indices[:-1]
        keep = order[first]
        images, texts = images[keep], texts[keep]
        datamodule = getattr(self.trainer, "datamodule", None)
        loader = getattr(datamodule, "loader", None)  # a perceptlab data module's loader group
        size = int(getattr(loader, "eval_size", 0) or self._val_batch_size or len(images))
        scale = full_tensor(self.backbone.model.logit_scale.detach()).float().exp()
        bias = getattr(self.backbone.model, "logit_bias", None)
        bias = () if bias is None else (full_tensor(bias.detach()).float(),)
        total = images.new_zeros((), dtype=torch.float64)
        for start in range(0, len(images), size):
            chunk = slice(start, start + size)
            loss = self.contrastive_loss(images[chunk], texts[chunk], scale, *bias, loss_fn=self._val_loss_fn)
            total += loss.double() * len(images[chunk])
        return images, texts, (total / max(1, len(images))).float()

