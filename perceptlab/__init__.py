"""perceptlab: a PyTorch Lightning framework for research on how CLIP-style models come to agree
with human perception.

The only top-level import name this project installs. Its subpackages live in the repository's
top-level folders (mapped by ``package-dir`` in ``pyproject.toml``) and form layers, each
importing only those before it (checked by import-linter, ``make test``):

    perceptlab.core               backbone, transforms, LoRA, optimiser, pure scores
    perceptlab.datamodules        on-disk formats, readers, data modules, the toy world
    perceptlab.lightning_modules  the stage modules (know nothing of each other)
    perceptlab.callbacks          the alignment suite, its probes, peaks, run reliability
    perceptlab.commands           the ``perceptlab`` command: cli, demo, report, synth
"""

__version__ = "0.2.0"
