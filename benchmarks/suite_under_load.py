"""The test suite five times in a row from a fresh clone, beside a CPU hog: the record the README cites.

Usage: python benchmarks/suite_under_load.py [--runs 5] [--clone ../fresh-clone] [--out benchmarks/suite]

Clones the current commit into `--clone` (beside this checkout, so that the Makefile finds the shared data as it
does on a fresh machine), then runs `make test` there `--runs` times in a row while one busy process per core
minus one (at least one) spins beside it. The first run includes creating the environments; the later ones
reuse them. Records every run's exit code, duration and pytest summary line, with the machine.
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
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(max(1, (os.cpu_count() or 2) - 1))]
    runs = []
    try:
        for index in range(args.runs):
            started = time.monotonic()
            result = subprocess.run(["make", "test"], cwd=args.clone, capture_output=True, text=True)
            summary = [line for line in result.stdout.splitlines() if " passed" in line or " failed" in line]
            runs.append({"run": index + 1, "exit": result.returncode, "seconds": round(time.monotonic() - started),
                         "summary": summary[-1] if summary else result.stderr.strip().splitlines()[-1:]})
            print(json.dumps(runs[-1]), flush=True)
    finally:
        for hog in hogs:
            hog.kill()
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit,
              "machine": machine_info(), "hogs": len(hogs), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "under-load.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# The suite beside a CPU hog", "",
             f"Measured {record['created']} on {record['machine']['cpu']}, {record['machine']['cores']} cores; commit "
             f"`{commit[:12]}` cloned fresh beside the checkout; `make test` {args.runs} times in a row with "
             f"{len(hogs)} busy process(es) spinning beside it (`python benchmarks/suite_under_load.py`). The first "
             "run includes creating both environments and the Debian tools check.", "",
             "| run | exit code | minutes | pytest |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['run']} | {r['exit']} | {r['seconds'] / 60:.1f} | {r['summary']} |" for r in runs]
    (args.out / "under-load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
