"""The installed package: one import name, the layer contract, what a wheel carries."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("core", "datamodules", "lightning_modules", "callbacks", "commands")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def copy_source(dest: Path) -> Path:
    """The files a build or an import-linter run reads, with ``perceptlab/``'s links kept as links."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    for name in LAYERS:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "perceptlab", dest / "perceptlab", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.mark.parametrize("name", ["callbacks", "datamodules", "lightning_modules", "core", "commands"])
def test_only_perceptlab_is_importable_from_another_directory(name, tmp_path):
    code = f"import perceptlab.{name}\ntry:\n    import {name}\nexcept ModuleNotFoundError:\n    print('absent')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "absent"


def test_wheel_installs_perceptlab_alone(tmp_path):
    src = copy_source(tmp_path / "src")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("perceptlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"perceptlab"}
    for layer in LAYERS:
        assert f"perceptlab/{layer}/__init__.py" in names
    assert "perceptlab/callbacks/probes/nights.py" in names
    assert "perceptlab/core/model_configs/perceptlab-vit-tiny-64.json" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "perceptlab = perceptlab.commands.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300)


def test_layer_contract_holds():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("module, statement, broken", [
    # an upward import inside a function is still an import
    ("core/optim.py", "def _late():\n    from perceptlab.callbacks import alignment\n", "perceptlab.core.optim"),
    ("datamodules/nights.py", "import perceptlab.lightning_modules.perceptual_init\n", "perceptlab.datamodules.nights"),
    ("lightning_modules/contrastive.py", "from perceptlab.lightning_modules import perceptual_tasks\n",
     "perceptlab.lightning_modules.contrastive"),
])
def test_layer_contract_breaks_on_an_upward_or_sideways_import(tmp_path, module, statement, broken):
    src = copy_source(tmp_path / "src")
    with open(src / module, "a") as f:
        f.write("\n\n" + statement)
    proc = lint_imports(src)
    assert proc.returncode != 0
    assert "1 broken" in proc.stdout and broken in proc.stdout, proc.stdout[-3000:]
