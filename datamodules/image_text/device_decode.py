"""Decoding training images on the model's device (``decode_on_device: true``).

At GPU scale the loader workers' JPEG decoding is what keeps a GPU waiting. With this option the
workers do not decode: each training batch carries its images' encoded bytes, packed into one
``uint8`` tensor (``image_bytes``) with ``image_offsets`` (``B + 1`` boundaries), and the data
module decodes them on the model's device just before the batch is moved there: JPEGs in one call
of ``torchvision.io.decode_jpeg(..., device=cuda)`` (nvJPEG), other formats (PNG, WebP) on the CPU.
The transform's geometric steps (resize, crops, flips) then run as tensor ops on the device
(``perceptlab.core.transforms.tensor_geometry``), and the batch's ``image`` is the same ``uint8``
``(B, 3, S, S)`` tensor the worker path gives, which the backbone normalises as usual.

On a CPU run the same code decodes on the CPU (what the tests exercise). An image the decoder
rejects is replaced by the batch's previous readable pair (image and caption), and counted in the
batch's ``skipped``, so a batch keeps ``batch_size`` pairs, as every process's contrastive loss
needs; the worker path instead reads the next sample, which the batch no longer can.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

JPEG_MAGIC = b"\xff\xd8\xff"


def pack(encoded: Sequence[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoded images -> one flat ``uint8`` tensor and ``(n + 1,)`` int64 offsets (tensors, so they
    travel through loader workers and pinned memory like any batch)."""
    lengths = torch.tensor([0, *(len(b) for b in encoded)], dtype=torch.long)
    flat = torch.frombuffer(bytearray(b"".join(encoded)), dtype=torch.uint8) if sum(lengths) else \
        torch.empty(0, dtype=torch.uint8)
    return flat, lengths.cumsum(0)


def unpack(flat: torch.Tensor, offsets: torch.Tensor) -> list[torch.Tensor]:
    bounds = offsets.tolist()
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def decode_images(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Encoded images (CPU ``uint8`` 1-D tensors) -> RGB ``uint8`` ``(3, H, W)`` on ``device``, or
    ``None`` where the decoder fails. JPEGs are decoded together on ``device``; if that call fails,
    one by one, so one bad file costs only itself."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    out: list[torch.Tensor | None] = [None] * len(encoded)
    jpegs = [i for i, e in enumerate(encoded) if bytes(e[:3].tolist()) == JPEG_MAGIC]
    if jpegs:
        try:
            decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
            for i, image in zip(jpegs, decoded):
                out[i] = image
        except RuntimeError:
            for i in jpegs:
                try:
                    out[i] = decode_jpeg(encoded[i], mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    out[i] = None
    for i in sorted(set(range(len(encoded))) - set(jpegs)):
        try:
            out[i] = decode_image(encoded[i], mode=ImageReadMode.RGB).to(device)
        except RuntimeError:
            out[i] = None
    return out


def decode_batch(batch: dict, geometry: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> dict:
    """A batch with ``image_bytes`` / ``image_offsets`` -> the same batch with ``image`` ``uint8``
    ``(B, 3, S, S)`` on ``device``; undecodable images are replaced (see the module docstring)."""
    encoded = unpack(batch.pop("image_bytes"), batch.pop("image_offsets"))
    images = decode_images(encoded, torch.device(device))
    good = [i for i, im in enumerate(images) if im is not None]
    if not good:
        raise RuntimeError(f"decode_on_device: none of the {len(images)} images of a batch could be decoded")
    text = batch["text"]
    for i, image in enumerate(images):
        if image is None:
            source = max((j for j in good if j < i), default=good[0])
            images[i] = images[source]
            text[i] = text[source]
    batch["skipped"] = batch["skipped"] + (len(images) - len(good))
    batch["image"] = torch.stack([geometry(im) for im in images])
    return batch
