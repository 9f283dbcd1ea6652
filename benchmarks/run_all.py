"""Run every ``benchmarks/bench_*.py`` and print one table (and ``benchmarks/results.json``).

Each benchmark is a script that prints one JSON object as its last stdout line. Benchmarks
compare side by side in one run (a ratio), so the table is meaningful on any machine; absolute
numbers are for the machine they ran on, recorded in the JSON.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent)
    seconds = round(time.perf_counter() - start, 1)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip().startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"benchmark": script.stem, "error": (proc.stderr or proc.stdout).strip()[-800:], "seconds": seconds}
    result = json.loads(lines[-1])
    result.setdefault("benchmark", script.stem)
    result["seconds"] = seconds
    return result


def _headline(result: dict) -> str:
    keys = [k for k in result if any(w in k for w in ("ratio", "share", "mfu", "speedup", "fraction"))]
    return ", ".join(f"{k}={result[k]:.3g}" if isinstance(result[k], (int, float)) else f"{k}={result[k]}" for k in keys)


def main() -> None:
    scripts = sorted(HERE.glob("bench_*.py"))
    only = set(sys.argv[1:])
    results = []
    for script in scripts:
        if only and script.stem not in only:
            continue
        print(f"running {script.name} ...", file=sys.stderr, flush=True)
        results.append(run(script))
    width = max((len(r["benchmark"]) for r in results), default=10)
    print(f"{'benchmark':<{width}}  {'seconds':>7}  headline")
    for r in results:
        head = f"ERROR: {r['error'].splitlines()[-1] if r['error'] else ''}" if "error" in r else _headline(r)
        print(f"{r['benchmark']:<{width}}  {r['seconds']:>7}  {head}")
    out = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "processor": platform.processor()}, "results": results}
    (HERE / "results.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
