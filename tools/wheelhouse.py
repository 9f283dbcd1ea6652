"""Collect every wheel perceptlab needs into one folder, for an install with no network.

    python tools/wheelhouse.py --out wheelhouse                       # this machine's Python and platform
    python tools/wheelhouse.py --out wheelhouse --python-version 3.11 --platform manylinux_2_28_x86_64
    python tools/wheelhouse.py --out wheelhouse --with-torch          # a node that brings no torch

What goes in: the project's own wheel, the build tools an editable install needs (setuptools<81,
wheel), and the dependency closure of ``perceptlab[test]`` at the exact versions installed here
(``make setup`` installs ``requirements/lock-cpu.txt``'s), read from the installed packages'
metadata with their environment markers evaluated. torch and what only torch needs (torchvision,
triton, the CUDA libraries) are left out unless ``--with-torch``: a GPU node brings its own build,
which the offline install keeps. Pure-Python packages are fetched (or built from an sdist) once for
any platform; compiled ones are downloaded for ``--python-version``/``--platform`` when given.

On the node: ``make setup WHEELHOUSE=DIR`` (a venv that sees the site's torch, then
``pip install --no-index --find-links DIR``), or by hand the pip lines ``--dry-run`` prints.
pip does the fetching and building; written here is only the choice of what to fetch, which no
pip command makes (pip download resolves from the ranges again and would pull a CUDA torch).
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import shlex
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# Packages a GPU node's own torch build brings: never fetched unless --with-torch.
TORCH_FAMILY = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")
BUILD_TOOLS = ["setuptools<81", "wheel"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str = "perceptlab", extras: tuple[str, ...] = ("test",), with_torch: bool = False) -> dict[str, str]:
    """``{name: installed version}`` of every package ``root[extras]`` needs here, transitively."""
    env = default_environment()
    found: dict[str, str] = {}
    extras_seen: dict[str, set[str]] = {}  # a package asked for again with a new extra is read again
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        dist = metadata.distribution(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in ("", *wanted)):
                continue
            key = canonical(req.name)
            if not with_torch and TORCH_FAMILY.match(key):
                continue
            new_extras = set(req.extras) - extras_seen.get(key, set())
            if key in found and not new_extras:
                continue
            try:
                found[key] = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                raise SystemExit(f"wheelhouse: {req.name} (needed by {name}) is not installed here; run `make setup` first")
            extras_seen.setdefault(key, set()).update(req.extras)
            todo.append((req.name, tuple(extras_seen[key])))
    found.pop(canonical(root), None)
    return dict(sorted(found.items()))


def is_pure(name: str) -> bool:
    """Installed from a wheel tagged for any platform (``*-none-any``)."""
    tags = [ln.split(":", 1)[1].strip() for ln in (metadata.distribution(name).read_text("WHEEL") or "").splitlines()
            if ln.startswith("Tag:")]
    return bool(tags) and all(t.endswith("-none-any") for t in tags)


def target_platforms(platform: str) -> list[str]:
    """``manylinux_2_<N>_<arch>`` and every older glibc tag a node with glibc 2.N also runs (with
    the legacy aliases ``manylinux2014``/``2010``/``1``), newest first; pip takes each ``--platform``
    literally."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not m:
        return [platform]
    newest, arch = int(m.group(1)), m.group(2)
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags = []
    for minor in range(newest, 4, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        if minor in legacy:
            tags.append(f"{legacy[minor]}_{arch}")
    return tags


def pip_commands(packages: dict[str, str], out: Path, python_version: str | None, platform: str | None) -> list[list[str]]:
    pip = [sys.executable, "-m", "pip"]
    pure = [f"{n}=={v}" for n, v in packages.items() if is_pure(n)]
    compiled = [f"{n}=={v}" for n, v in packages.items() if not is_pure(n)]
    target = []
    if python_version or platform:
        target = ["--only-binary=:all:", "--implementation", "cp"]
        target += ["--python-version", python_version] if python_version else []
        for tag in target_platforms(platform) if platform else []:
            target += ["--platform", tag]
    return [
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
        [*pip, "download", "--no-deps", "-d", str(out), *BUILD_TOOLS],
        [*pip, "wheel", "--no-deps", "-w", str(out), *pure],
        [*pip, "download", "--no-deps", "-d", str(out), *target, *compiled],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("wheelhouse"))
    parser.add_argument("--python-version", default=None, help="target Python, e.g. 3.11 (default: this one)")
    parser.add_argument("--platform", default=None, help="target platform tag, e.g. manylinux_2_28_x86_64")
    parser.add_argument("--with-torch", action="store_true", help="also torch, torchvision and the CUDA libraries")
    parser.add_argument("--dry-run", action="store_true", help="print the packages and pip commands only")
    args = parser.parse_args(argv)
    packages = closure(with_torch=args.with_torch)
    print(f"wheelhouse: perceptlab + {len(packages)} packages"
          + ("" if args.with_torch else " (torch and the CUDA libraries left to the node)") + f" -> {args.out}",
          file=sys.stderr)
    commands = pip_commands(packages, args.out, args.python_version, args.platform)
    missing: list[str] = []
    for i, cmd in enumerate(commands, 1):
        if args.dry_run:
            print(shlex.join(["python", *cmd[1:]]))
            continue
        print(f"[{i}/{len(commands)}] pip {cmd[3]} ...", file=sys.stderr, flush=True)
        if subprocess.run(cmd).returncode != 0:
            if not any("==" in a for a in cmd):  # the project's own wheel or the build tools: nothing to go on without
                raise SystemExit(f"wheelhouse: failed: {shlex.join(cmd)}")
            missing += fetch_one_by_one(cmd)
    if not args.dry_run:
        print(f"wheelhouse: {len(list(args.out.glob('*.whl')))} wheels in {args.out}; on the node: "
              f"make setup WHEELHOUSE={args.out}", file=sys.stderr)
    if missing:
        print(f"wheelhouse: no wheel for the target: {', '.join(missing)} (add them by hand, e.g. a build "
              "on a machine like the node, or another version that has one)", file=sys.stderr)
        return 1
    return 0


def fetch_one_by_one(cmd: list[str]) -> list[str]:
    """After a failed pip call over many packages: each on its own; returns the ones pip could not get
    (a version without a wheel for the target platform), so one does not stop the rest."""
    head = [a for a in cmd if "==" not in a]
    failed = []
    for requirement in (a for a in cmd if "==" in a):
        if subprocess.run([*head, requirement], capture_output=True, text=True).returncode != 0:
            failed.append(requirement)
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
