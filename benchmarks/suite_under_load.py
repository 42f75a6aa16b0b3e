"""The test suite five times in a row from a fresh clone, beside a CPU hog: the record the README cites.

Usage: .venv/bin/python benchmarks/suite_under_load.py [--runs 5] [--clone ../fresh-clone] [--out benchmarks/suite]

Clones the current commit into `--clone` (beside this checkout, so that the Makefile finds the shared data as it
does on a fresh machine) and times the README's main job there, `make bench`, on a quiet machine. Then runs
`make test` `--runs` times in a row while one busy process per core minus one (at least one) spins beside it:
the first run includes creating the test environments, the later ones reuse them. Last, quiet again, the
`not slow` subset. Records every run's exit code, duration and pytest summary line, with the machine: the
README's times come from here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
HOG = "while True:\n    pass\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clone", type=Path, default=REPOSITORY.parent / "fresh-clone")
    parser.add_argument("--out", type=Path, default=REPOSITORY / "benchmarks" / "suite")
    args = parser.parse_args()
    sys.path.insert(0, str(REPOSITORY))
    from cxr_edge.runtime.evaluation.bench import machine_info

    commit = subprocess.run(["git", "-C", str(REPOSITORY), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    shutil.rmtree(args.clone, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", str(REPOSITORY), str(args.clone)], check=True)
    bench = timed(["make", "bench"], args.clone, "make bench (quiet, fresh clone)")
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(max(1, (os.cpu_count() or 2) - 1))]
    runs = []
    try:
        for index in range(args.runs):
            runs.append(timed(["make", "test"], args.clone, f"make test {index + 1} beside the hog"))
    finally:
        for hog in hogs:
            hog.kill()
    quick = timed([".venv/bin/pytest", "-q", "-m", "not slow"], args.clone, "pytest -m 'not slow' (quiet)",
                  {"CXR_DATA": data_setting(args.clone)})
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit,
              "machine": machine_info(), "hogs": len(hogs), "runs": [bench, *runs, quick]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "under-load.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# The suite beside a CPU hog", "",
             f"Measured {record['created']} on {record['machine']['cpu']}, {record['machine']['cores']} cores; commit "
             f"`{commit[:12]}` cloned fresh beside the checkout; `make test` {args.runs} times in a row with "
             f"{len(hogs)} busy process(es) spinning beside it (`.venv/bin/python benchmarks/suite_under_load.py`). "
             "The first test run includes creating both environments and the Debian tools check; `make bench` "
             "before it and the `not slow` subset after it ran on a quiet machine.", "",
             "| run | exit code | minutes | result |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['run']} | {r['exit']} | {r['seconds'] / 60:.1f} | {r['summary']} |" for r in record["runs"]]
    lines += [f"\n{r['run']}: {line}" for r in record["runs"] for line in r["failed"]]
    (args.out / "under-load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def data_setting(clone: Path) -> str:
    """The Makefile's `CXR_DATA` default for this clone: the three shared sets beside it."""
    shared = clone.resolve().parent / "shared" / "datasets"
    return ":".join(str(shared / name) for name in ("cxr4", "cxr-adult", "cxr-nih"))


def timed(command: list[str], clone: Path, name: str, extra_env: dict[str, str] | None = None) -> dict[str, object]:
    """Run one command in the clone; its exit code, whole minutes-and-seconds and last summary line."""
    started = time.monotonic()
    result = subprocess.run(command, cwd=clone, capture_output=True, text=True, env={**os.environ, **(extra_env or {})})
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    summary = [line for line in lines if " passed" in line or " failed" in line] or lines[-1:] or \
        result.stderr.strip().splitlines()[-1:]
    failed = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    row = {"run": name, "exit": result.returncode, "seconds": round(time.monotonic() - started),
           "summary": summary[-1].strip("= ") if summary else "", "failed": failed}
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
