"""The offline install a GPU node needs: from a wheelhouse, with no package index, beside the
site's own torch (which it keeps); and the wheelhouse's choice of what to fetch."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from test_package import REPO, copy_source

SITE = Path(sysconfig.get_paths()["purelib"])


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fresh_env(path: Path, site: Path | None) -> Path:
    """A new venv (no pip of its own); ``site`` on its path plays the node's preinstalled packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    if site is not None:
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        Path(purelib, "site_packages_of_the_node.pth").write_text(str(site) + "\n")
    return python


def clean_env() -> dict:
    """This environment without PYTHONPATH: the fresh venv sees only what its own path gives it."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def pip_offline(python: Path, wheelhouse: Path, *requirements: str) -> subprocess.CompletedProcess:
    # No pip configuration file either: a machine's own find-links or constraints would leak in.
    env = {**clean_env(), "PIP_CONFIG_FILE": os.devnull}
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
                           "--find-links", str(wheelhouse), *requirements], capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.mark.slow
def test_installs_from_a_wheelhouse_with_no_index_and_keeps_the_sites_torch(tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    src = copy_source(tmp_path / "src")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(wheelhouse), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The node's site-packages: everything this environment has (torch included), perceptlab not.
    node_site = tmp_path / "node_site"
    node_site.mkdir()
    import torch

    for site in dict.fromkeys([SITE, Path(torch.__file__).resolve().parents[1]]):  # torch may come from a module's path
        for entry in site.iterdir():
            if "perceptlab" not in entry.name.lower() and entry.suffix != ".pth" and not (node_site / entry.name).exists():
                (node_site / entry.name).symlink_to(entry)

    # Without the node's packages the index being off is what stops the install: nothing is fetched.
    bare = fresh_env(tmp_path / "bare", site=None)
    proc = pip_offline(bare, wheelhouse, "perceptlab")
    assert proc.returncode != 0 and "No matching distribution found for" in proc.stderr, proc.stderr[-2000:]

    python = fresh_env(tmp_path / "node", site=node_site)
    proc = pip_offline(python, wheelhouse, "perceptlab")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    installed = [ln for ln in proc.stdout.splitlines() if ln.startswith("Successfully installed")]
    assert installed == ["Successfully installed perceptlab-0.2.0"], proc.stdout[-2000:]  # torch untouched
    code = "import torch, perceptlab, perceptlab.commands.cli as c; print(torch.__file__); print(perceptlab.__file__)"
    proc = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch_file, perceptlab_file = proc.stdout.split()
    assert torch_file.startswith(str(node_site)) and perceptlab_file.startswith(str(tmp_path / "node"))
    proc = subprocess.run([str(python), "-m", "perceptlab", "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=clean_env())
    assert proc.returncode == 0 and "evaluate" in proc.stdout, proc.stderr[-3000:]


def test_wheelhouse_fetches_the_closure_at_the_installed_versions_and_leaves_torch_to_the_node():
    tool = load_tool("wheelhouse")
    import importlib.metadata as metadata

    without = tool.closure()
    with_torch = tool.closure(with_torch=True)
    # what perceptlab[test] asks for directly is there, at the version installed here
    for name in ("open-clip-torch", "lightning", "pyiqa", "clip-benchmark", "pytest", "import-linter", "jsonargparse"):
        assert without[name] == metadata.version(name)
    family = {n for n in with_torch if tool.TORCH_FAMILY.match(n)}
    assert {"torch", "torchvision"} <= family and not family & set(without)
    assert "perceptlab" not in without and set(without) < set(with_torch)
    # an extra asked for after its package was already found still counts (datasets: fsspec[http])
    assert "aiohttp" in without
    # a package only torch needs stays with torch (sympy: torch's symbolic shapes)
    assert "sympy" in with_torch and "sympy" not in without
    commands = tool.pip_commands(without, Path("wh"), "3.11", "manylinux2014_x86_64")
    fetched = [arg for cmd in commands[2:] for arg in cmd if "==" in arg]
    assert sorted(a.split("==")[0] for a in fetched) == sorted(without)
    assert {"--only-binary=:all:", "--platform", "manylinux2014_x86_64"} <= set(commands[3])
    assert "numpy" in " ".join(commands[3]) and "numpy" not in " ".join(commands[2])  # compiled: for the target
    # pip takes --platform literally: a glibc 2.28 node also runs every older manylinux wheel
    tags = tool.target_platforms("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-1] == "manylinux1_x86_64" and len(tags) == 27
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64"} <= set(tags)
    assert tool.target_platforms("macosx_11_0_arm64") == ["macosx_11_0_arm64"]
