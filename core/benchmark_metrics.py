"""Zero-shot classification and retrieval metrics, computed by CLIP_benchmark on features we encoded.

CLIP_benchmark (``clip_benchmark.metrics``) is the field's definition of these numbers: class
embeddings averaged over templates, ``100 * image @ classifier`` logits, top-k accuracy, sklearn's
balanced accuracy as mean per-class recall, and retrieval recall@k where a query counts as found
when any of its positives is in the top k. We call its own functions (``zero_shot_classifier``,
``run_classification``, ``recall_at_k``) for the per-item outcomes (each image's top-1 and top-5
hit, each query's recall hit), whose means are its metrics, and which the bootstrap intervals
resample. What is ours is only the glue: :class:`EncodedModel` is a CLIP-like model whose encoders
look up features the caller has already computed (sharded over processes, from cached images), and
whose tokenizer maps each text to its row. ``tests/test_benchmark_suite.py`` checks the resulting
numbers against CLIP_benchmark's ``eval`` command.

Two run-time adjustments, both inside :func:`clip_benchmark_engine` and undone on exit (the
package itself is not modified):

* clip_benchmark 1.6.2's ``accuracy`` calls ``float()`` on a one-element numpy array, which
  numpy 2.4 refuses (``TypeError: only 0-dimensional arrays can be converted to Python
  scalars``). Inside the context the module's global name ``float`` is shadowed by one that takes
  ``.item()`` of a one-element array first; every other ``float`` call there behaves as before.
  ``tests/test_benchmark_suite.py`` checks that the unpatched function still raises, and fails
  (asking for this shim to go) once a release fixes it.
* its progress bars (one ``tqdm`` per class and per batch) are silenced; the callers report progress.
"""
from __future__ import annotations

import builtins
import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch


def _float_of_one_element(value=0.0):
    """``float`` as numpy < 2.4 did it: a one-element array is converted through its element."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    return builtins.float(value)


@contextmanager
def clip_benchmark_engine(quiet: bool = True) -> Iterator[None]:
    """CLIP_benchmark's metric modules with the adjustments of the module docstring
    (``quiet=False``: the numpy fix alone, progress bars kept)."""
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval
    from tqdm import tqdm

    silent = functools.partial(tqdm, disable=True)
    saved = []
    patches = [(zeroshot_classification, "float", _float_of_one_element)]
    if quiet:
        patches += [(zeroshot_classification, "tqdm", silent), (zeroshot_retrieval, "tqdm", silent)]
    for module, name, value in patches:
        saved.append((module, name, module.__dict__.get(name, _MISSING)))
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in reversed(saved):
            if value is _MISSING:
                delattr(module, name)
            else:
                setattr(module, name, value)


_MISSING = object()


class EncodedModel:
    """A CLIP-like model for CLIP_benchmark whose encoders return precomputed features.

    ``image_features`` ``(n_images, d)``: row ``i`` is image ``i``; the "images" handed to
    :meth:`encode_image` are row indices. ``texts`` and ``text_features`` ``(n_texts, d)``: the
    tokenizer maps each text to its row, :meth:`encode_text` looks the rows up. Features may be
    unnormalised (CLIP_benchmark normalises them, as it does a real model's output).
    """

    def __init__(self, image_features: torch.Tensor, texts: Sequence[str], text_features: torch.Tensor) -> None:
        if len(texts) != text_features.shape[0]:
            raise ValueError(f"{len(texts)} texts but {text_features.shape[0]} text feature rows")
        self.image_features = image_features.float().cpu()
        self.text_features = text_features.float().cpu()
        self.row = {t: i for i, t in enumerate(texts)}

    def tokenizer(self, texts: Sequence[str]) -> torch.Tensor:
        try:
            return torch.tensor([self.row[t] for t in texts], dtype=torch.long)
        except KeyError as exc:
            raise KeyError(f"text {exc.args[0]!r} was not encoded beforehand") from None

    def encode_image(self, rows: torch.Tensor) -> torch.Tensor:
        return self.image_features[rows]

    def encode_text(self, rows: torch.Tensor) -> torch.Tensor:
        return self.text_features[rows]


def prompts_for(classnames: Sequence[str], templates: Sequence[str] | Mapping[str, Sequence[str]]) -> list[str]:
    """Every prompt CLIP_benchmark's classifier encodes, in its order: ``template.format(c=name)``
    for each class and template, or the class's own list when ``templates`` is a dict (CuPL)."""
    if isinstance(templates, Mapping):
        return [t for name in classnames for t in templates[name]]
    return [t.format(c=name) for name in classnames for t in templates]


# ------------------------------------------------------------------------------- per-item outputs
def zeroshot_classification_items(
    image_features: torch.Tensor,
    labels: torch.Tensor,
    classnames: Sequence[str],
    templates: Sequence[str] | Mapping[str, Sequence[str]],
    texts: Sequence[str],
    text_features: torch.Tensor,
    batch_size: int = 1024,
) -> dict[str, torch.Tensor]:
    """Per image: ``label``, ``predicted`` (top-1 class) and, with 5 classes or more, ``hit5``
    (the label is among the top 5), from CLIP_benchmark's own classifier and logits
    (``zero_shot_classifier``, ``run_classification``), so their means are its ``acc1``/``acc5``."""
    from clip_benchmark.metrics import zeroshot_classification

    model = EncodedModel(image_features, texts, text_features)
    rows = torch.arange(image_features.shape[0])
    batches = [(rows[i:i + batch_size], labels[i:i + batch_size].cpu()) for i in range(0, len(rows), batch_size)]
    with clip_benchmark_engine():
        classifier = zeroshot_classification.zero_shot_classifier(
            model, model.tokenizer, list(classnames),
            templates if isinstance(templates, Mapping) else list(templates), "cpu", amp=False)
        logits, target = zeroshot_classification.run_classification(model, classifier, batches, "cpu", amp=False)
    out = {"label": target, "predicted": logits.argmax(dim=1)}
    if len(classnames) >= 5:
        out["hit5"] = (logits.topk(5, dim=1).indices == target[:, None]).any(dim=1)
    return out


def zeroshot_retrieval_items(
    image_features: torch.Tensor,
    captions: Sequence[Sequence[str]],
    texts: Sequence[str],
    text_features: torch.Tensor,
    recall_k: Sequence[int] = (1, 5, 10),
    batch_size: int = 1024,
) -> dict[str, torch.Tensor]:
    """Per image: ``captions`` (how many), ``text_hit@k`` (one of its captions is among the top k
    texts of the image) and ``image_hits@k`` (how many of its captions find it in their top k),
    with CLIP_benchmark's ``recall_at_k``: ``text_retrieval_recall@k`` is the mean of
    ``text_hit@k``, ``image_retrieval_recall@k`` = sum of ``image_hits@k`` / sum of ``captions``."""
    import torch.nn.functional as F
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

    model = EncodedModel(image_features, texts, text_features)
    caption_rows = model.tokenizer([t for caps in captions for t in caps])
    image_of_caption = torch.tensor([i for i, caps in enumerate(captions) for _ in caps], dtype=torch.long)
    images = F.normalize(model.image_features, dim=-1)
    scores = F.normalize(model.encode_text(caption_rows), dim=-1) @ images.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(scores)), image_of_caption] = True
    n = len(captions)
    out = {"captions": torch.bincount(image_of_caption, minlength=n)}
    with clip_benchmark_engine():
        for k in recall_k:
            caption_hit = batchify(recall_at_k, scores, positive, batch_size, "cpu", k=k) > 0
            out[f"text_hit@{k}"] = batchify(recall_at_k, scores.T, positive.T, batch_size, "cpu", k=k) > 0
            out[f"image_hits@{k}"] = torch.bincount(image_of_caption, weights=caption_hit.double(), minlength=n)
    return out


# ------------------------------------------------------------- the one classifier and recall
def clip_benchmark_template(template) -> str:
    """A template in CLIP_benchmark's form (``"a photo of a {c}."``) from ours (``{}``) or
    open_clip's (a callable such as those of ``SIMPLE_IMAGENET_TEMPLATES``)."""
    if callable(template):
        template = template("{c}")
    return template.replace("{}", "{c}")


def zeroshot_classifier(model, tokenizer, classnames: Sequence[str],
                        templates: Sequence | Mapping[str, Sequence[str]], device) -> torch.Tensor:
    """``(d, classes)`` class embeddings by CLIP_benchmark's ``zero_shot_classifier``: each class's
    prompts encoded with ``model.encode_text``, L2-normalised, averaged and normalised again.
    The one zero-shot classifier of the project: stage 2's validation, the shape-bias and noise
    probes and the benchmark probe all use it. ``model`` needs ``encode_text``; the caller's
    autocast context applies (CLIP_benchmark's own is switched off)."""
    from clip_benchmark.metrics import zeroshot_classification

    device = torch.device(device)
    if not isinstance(templates, Mapping):
        templates = [clip_benchmark_template(t) for t in templates]
    with clip_benchmark_engine():
        weights = zeroshot_classification.zero_shot_classifier(
            model, tokenizer, list(classnames), templates if isinstance(templates, Mapping) else list(templates),
            device.type, amp=False)
    return weights.to(device)


def paired_retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor,
                            ks: Sequence[int] = (1, 5, 10), batch_size: int = 1024) -> dict[str, float]:
    """Recall@k of paired retrieval in both directions, in [0, 1], by CLIP_benchmark's ``recall_at_k``.

    Row i of ``image_features`` and ``text_features`` ``(n, d)`` form a pair. ``i2t_R@k``: share of
    images whose own caption is among their k most similar captions; ``t2i_R@k``: the converse
    (CLIP_benchmark's ``text_retrieval_recall@k`` / ``image_retrieval_recall@k``). Ties are broken
    by ``torch.topk``'s order, as CLIP_benchmark does (not in the pair's favour)."""
    import torch.nn.functional as F
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

    images = F.normalize(image_features.float(), dim=-1)
    texts = F.normalize(text_features.float(), dim=-1)
    scores = texts @ images.T  # (texts, images)
    positive = torch.eye(len(scores), dtype=torch.bool)
    out = {}
    with clip_benchmark_engine():
        for k in ks:
            k_eff = min(k, len(scores))
            out[f"i2t_R@{k}"] = float((batchify(recall_at_k, scores.T, positive, batch_size, "cpu", k=k_eff) > 0).float().mean())
            out[f"t2i_R@{k}"] = float((batchify(recall_at_k, scores, positive, batch_size, "cpu", k=k_eff) > 0).float().mean())
    return out
