"""The toy world: a procedural, deterministic world that writes every on-disk format perceptlab reads.

``synthesize(out, seed, scale)`` writes small datasets (NIGHTS triplets, captioned image-text
shards/CSV/parquet, pyiqa-style IQA sets, cue-conflict images, a classification folder, LaMem-
and EmoSet-style sets) under ``out`` so the whole pipeline runs offline on a CPU. Every number
below is a constant of this module; ``world.json`` repeats them for each generated world.

Determinism
-----------
Everything is drawn from ``numpy.random.default_rng``. Dataset ``name`` uses the generator
``default_rng([seed, zlib.crc32(name)])`` (sub-seeded per dataset, so one dataset does not depend
on the others or on their order); every image is rendered from a :class:`Scene` that carries its
own integer ``seed`` for per-pixel randomness (grass, speckle, pixel noise). PNG and JPEG
(quality 95 for photos, fixed qualities for the JPEG distortion), tar members (mtime 0, uid/gid
0), CSVs (explicit number formatting) and parquet files are written deterministically, so the
same ``(seed, scale, image_size)`` gives byte-identical files.

Objects
-------
There are 16 object classes, the cue-conflict class names (:data:`CLASSES`). Each class has a
canonical SHAPE, TEXTURE and COLOUR (:data:`CLASS_TABLE`):

=========  ===========  =============  ========
class      shape        texture        colour
=========  ===========  =============  ========
airplane   plus         stripes_h      red
bear       disc         noise_blobs    brown
bicycle    ring         spokes         cyan
bird       triangle     stripes_d45    yellow
boat       bowl         waves          blue
bottle     bar          stripes_v      green
car        wide_rect    checker        orange
cat        star5        stripes_d135   gray
chair      l_shape      grid           purple
clock      gear         rings          pink
dog        ellipse      dots           olive
elephant   heart        speckle        teal
keyboard   diamond      crosshatch     navy
knife      crescent     plain          lime
oven       square       zigzag         maroon
truck      arrow        spiral         magenta
=========  ===========  =============  ========

A shape is an implicit field ``f(u, v)`` in object coordinates (units of the object radius,
positive inside, about a signed distance); the silhouette is ``f > 0``, anti-aliased over one
pixel. A texture is a pattern ``t(x, y)`` in [0, 1] over object-centred, object-rotated pixel
coordinates with a fixed period in pixels (scaled by ``image_size / 64``), so textures keep their
frequency whatever the object size. An object of colour ``c`` (RGB in [0, 1]) is painted as
``dark + (light - dark) * t`` with ``dark = 0.45 c`` and ``light = c + 0.5 (1 - c)``.

Objects vary in position, rotation (uniform in [-15, 15] degrees) and size. Sizes are named in
captions: ``small`` (radius 0.14-0.19 of the image side), ``medium`` (0.22-0.27), ``large``
(0.30-0.36). Backgrounds (:data:`BACKGROUNDS`) are ``light`` (plain light grey), ``dark`` (plain
near-black), ``sky`` (blue-to-white vertical gradient), ``grass`` (noisy green), ``sand`` (noisy
beige) and ``sunset`` (orange-to-purple gradient).

Datasets and their rules
------------------------
``nights/`` -- NIGHTS (DreamSim) triplets. ``data.csv`` header
``id,left_vote,right_vote,votes,ref_path,left_path,right_path,split,is_imagenet,prompt``.
Paths are relative to ``nights/``: triplet ``id`` lives at ``ref/{id // 100:03d}/{id % 100:03d}.png``
and ``distort/{id // 100:03d}/{id % 100:03d}_{0|1}.png`` (``_0`` is left, ``_1`` right). Splits
``train``/``val``/``test`` are assigned by a random permutation of ids; ``is_imagenet`` is True
when the reference class is one of the first eight classes (airplane ... cat), so both
``test_imagenet`` and ``test_no_imagenet`` are non-empty. ``prompt`` is ``"a photo of a <class>"``
(``an`` before a vowel). The reference is a canonical object (class shape, texture and colour) of
radius 0.24-0.34 on a random background. Each distortion keeps the background and perturbs five
cues by amounts ``a_k`` in [0, 1]: ``shape`` (the shape field is blended toward a random other
class's shape, ``f = (1 - a) f_ref + a f_other``), ``colour`` (RGB blended toward a random other
palette colour), ``texture`` (pattern blended toward a random other class's texture),
``position`` (shift by ``a * 0.18`` of the image side in a random direction, clipped to keep the
object in frame) and ``noise`` (Gaussian pixel noise of std ``a * 0.12``). Half of the triplets
are *single-cue*: each side changes exactly one cue (two different cues) by ``U(0.35, 1)``; the
others are *mixed*: each cue is active with probability 0.5 (at least one) with amount
``U(0.1, 1)``.

HUMAN RULE: the perceived distance of a distortion to the reference is
``D = 4.0 a_shape + 3.0 a_colour + 0.5 a_texture + 0.5 a_position + 0.5 a_noise``
(people weigh shape and colour far above texture, position and noise). The share of people who
find the RIGHT image closer is ``p = sigmoid((D_left - D_right) / 0.5)``. Each row has ``votes``
people (uniform 6-10; with probability 0.06 uniform 3-5, rows a loader drops), the number
choosing right is ``Binomial(votes, p)``, ``right_vote`` is that count over ``votes`` and
``left_vote = 1 - right_vote``. A model whose distances follow shape and colour reaches a high
2AFC; a texture- or pixel-driven model does not. ``nights/toy_annotations.csv`` (ignored by the
loaders) records the cue amounts, ``D_left``, ``D_right`` and ``p`` for each id.

``image_text/`` -- captioned images of canonical objects (shape and texture of the class; the
colour is the class colour with probability 0.7, else a random palette colour, and the caption
names the colour actually drawn), random size and background. Captions name class, colour, size
and background through a few templates (e.g. ``"a large red airplane on grass"``). The same
training set is written three ways: (a) webdataset shards ``shards/{00000..N}.tar`` as img2dataset
writes them (``KEY.jpg``, ``KEY.txt``, ``KEY.json`` with a 9-digit ``KEY = shard * 10000 + i``,
plus ``NNNNN_stats.json`` and ``NNNNN.parquet`` beside each tar); (b) ``pairs.csv``,
tab-separated, columns ``filepath`` and ``title`` (open_clip defaults), ``filepath`` relative to
the CSV's own folder (``image_text/``), images at ``images/train/KEY.jpg``; (c) ``hf/train.parquet``
(columns ``image`` -- a ``datasets.Image`` feature -- and ``caption``). A held-out validation set
is ``val_shards/00000.tar`` and ``val_pairs.csv`` (images at ``images/val/KEY.jpg``), for retrieval.

``iqa/`` -- pyiqa meta-info CSVs (name column first, score second, as pyiqa reads them):
``koniq/meta_info_KonIQ10kDataset.csv`` (``img_name,mos,std,split``, split in train/val/test,
70/10/20, images in ``koniq/images/``), ``livec/meta_info_LIVEChallengeDataset.csv``
(``img_name,mos,std``, ``livec/images/``), ``spaq/meta_info_SPAQDataset.csv``
(``img_name,mos,brightness,colorfulness,contrast,noisiness,sharpness``, ``spaq/images/``),
``tid2013/meta_info_TID2013Dataset.csv`` (``ref_name,dist_name,mos,std``,
``tid2013/reference_images/I01.bmp``, ``tid2013/distorted_images/i01_TT_L.bmp``) and
``kadid10k/meta_info_KADID10kDataset.csv`` (``ref_name,dist_name,dmos,std``, references and
distorted images together in ``kadid10k/images/``, ``I01.png`` / ``I01_TT_LL.png``).
Distortion types ``TT`` (:data:`DISTORTIONS`, 1-based): gaussian_noise, gaussian_blur, jpeg,
contrast_change, saturation_shift, pixelate, each at levels 1-5.

MOS RULE: a distortion of type ``t`` at level ``L`` (0 = pristine) has true quality
``q = 1 + 4 (1 - sigmoid(slope_t (L - mid_t)))`` on a 1-5 scale (slope/mid per type in
:data:`DISTORTIONS`: people are most sensitive to noise and pixelation, least to saturation). Each
image is rated by 20 raters, ``rating = clip(q + N(0, 0.5), 1, 5)``; ``mos`` is the mean rating,
``std`` the raters' standard deviation, both mapped linearly to the dataset's native range (pyiqa's
``mos_range``): KonIQ, LIVE-C and SPAQ 1-100, TID2013 0-9, KADID-10k 1-5 (``dmos`` is the 1-5 value).
ALL toy scores are HIGHER-IS-BETTER (as in the real KADID ``dmos`` and TID2013 ``mos``). FR sets
apply every type and level to each reference; NR sets show a random object scene with one random
distortion at a random level (pristine with probability 1/6). SPAQ's attribute columns (0-100,
higher is better) are: brightness = mean luminance, colorfulness = Hasler-Suesstrunk
colourfulness, contrast = luminance std, noisiness and sharpness = the quality term of the noise
(resp. blur/pixelate/jpeg) distortion, 100 when absent.

``cue_conflict/<shape_class>/<shape><i>-<texture><j>.png`` -- the shape of one class filled with
the texture AND colour of another, large and centred on the ``light`` background; ``i`` is the
shape instance (pose) index and ``j`` the texture instance (texture phase) index, both from 1.
A few items have shape class == texture class (scoring drops them).

``classification/<class>/<class>_NNNN.png`` -- canonical objects of all 16 classes with random
position, rotation, size and background.

``benchmark/`` -- a two-task zero-shot suite in CLIP_benchmark's webdataset layout
(``<task>/test/{0,1}.tar``, ``test/nshards.txt``): ``toy_objects`` is the classification folder as a
classification task (``KEY.png`` + ``KEY.cls``, ``classnames.txt`` = the 16 classes,
``zeroshot_classification_templates.txt`` = open_clip's seven simple ImageNet templates with
``{c}``); ``toy_captions`` is the held-out caption set (``image_text/val_shards``) as a retrieval
task (``dataset_type.txt`` = ``retrieval``; ``KEY.txt`` holds five captions, the pair's own first,
then the same scene in the other caption templates).

``lamem/images/NNNNNNNN.jpg``, ``lamem/splits/{train,val,test}_{1..5}.txt`` (lines
``filename score``; five random 70/10/20 splits). A scene has one main object (random class and
palette colour, radius 0.12-0.38), 0-4 small clutter objects and pixel noise of std 0-0.08 (half
of the images have none). MEMORABILITY RULE: ``score = clip(sigmoid(-1.2 + 2.0 s + 2.5 C + 1.0 S
- 0.5 n - 12 sigma) + N(0, 0.03), 0, 1)`` with ``s`` = (radius - 0.12) / 0.26, ``C`` = |luminance
of the object colour - mean luminance of the background| (in [0, 1]), ``S`` = HSV saturation of the
object colour, ``n`` = number of clutter objects and ``sigma`` = noise std: big, contrasting,
saturated, uncluttered, clean objects are memorable.

``emoset/{train,val,test}.json`` -- lists of ``[emotion, image_path, annotation_path]`` with
paths relative to ``emoset/`` (``image/<emotion>/<emotion>_NNNNN.jpg`` and
``annotation/<emotion>/<emotion>_NNNNN.json``; numbering per emotion from 1, splits 70/10/20
per emotion). Annotations hold ``emotion``, ``brightness``, ``colorfulness`` (image statistics
in [0, 1]), ``scene`` (the background name), ``object`` (class names), ``facial_expression``
and ``human_action`` (null). EMOTION RULE: each emotion has a mood -- a background, an object
palette and a global tone (brightness gain, saturation factor), see :data:`EMOTION_RULES`:
amusement = light background, yellow/orange/pink; awe = sky, blue/cyan/teal, large objects;
contentment = grass, green/lime/olive; excitement = sunset, red/magenta/orange, saturation 1.3;
anger = dark, red/maroon; disgust = sand, olive/brown, saturation 0.6; fear = dark,
navy/purple, brightness 0.6, small objects; sadness = light, blue/gray, brightness 0.8 and
saturation 0.3. With probability 0.85 an image follows its emotion's mood; otherwise background,
palette colour and size are random and the tone neutral, so a small model beats chance (1/8)
clearly but not perfectly.

``world.json`` -- seed, scale, image_size, the class table, backgrounds, counts per dataset,
relative paths and all rule parameters.
"""
from __future__ import annotations

from perceptlab.datamodules.toyworld.render import (
    ObjectSpec,
    Scene,
    render,
    render_background,
    shape_field,
    texture_field,
)
from perceptlab.datamodules.toyworld.rules import (
    caption,
    distort,
    memorability,
    perceived_distance,
    quality,
    share_right,
)
from perceptlab.datamodules.toyworld.world import (
    BACKGROUNDS,
    CLASS_TABLE,
    CLASSES,
    COLOURS,
    DISTORTIONS,
    EMOTION_RULES,
    EMOTIONS,
    IQA_RANGES,
    MEMORABILITY,
    NIGHTS_CUES,
    NIGHTS_TEMPERATURE,
    NIGHTS_WEIGHTS,
    SHAPES,
    SIZES,
    TEXTURE_WORDS,
    TEXTURES,
)

__all__ = [
    "BACKGROUNDS",
    "CLASSES",
    "CLASS_TABLE",
    "COLOURS",
    "DISTORTIONS",
    "EMOTIONS",
    "EMOTION_RULES",
    "IQA_RANGES",
    "MEMORABILITY",
    "NIGHTS_CUES",
    "NIGHTS_TEMPERATURE",
    "NIGHTS_WEIGHTS",
    "PATHS",
    "SCALES",
    "TOY_SETS",
    "SHAPES",
    "SIZES",
    "TEXTURES",
    "TEXTURE_WORDS",
    "ObjectSpec",
    "Scene",
    "caption",
    "distort",
    "memorability",
    "perceived_distance",
    "quality",
    "render",
    "render_background",
    "shape_field",
    "share_right",
    "synthesize",
    "texture_field",
]

# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
from perceptlab.datamodules.toyworld.synthesize import PATHS, SCALES, TOY_SETS, synthesize  # noqa: E402,F401
