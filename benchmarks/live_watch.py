"""Reliability of `cxr-edge watch`: 500 files in bursts, 10 % broken, one kill -9 and a restart in the middle.

Usage: python benchmarks/live_watch.py [--data DIR] [--count 500] [--bursts 10] [--model FILE] [--out DIR]

Images of the labelled data folder ($CXR_DATA) are dropped into a watched folder in a scratch directory (never in
the repository), the way consoles write them: half written in place, half written under a ``.part`` name and
renamed. One in ten is broken (truncated JPEG, text named .png, empty file). The watcher runs as the service
would, in its own process with the shipped model. After half of the bursts it is killed with SIGKILL while
it works, restarted, and the rest are dropped. Then every file is accounted for: each valid image has exactly
one result and sits in done/, each broken one sits in failed/ with its reason, nothing is left behind. Resident
memory of the restarted watcher is sampled throughout. Writes watch.json and watch.md into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from cxr_edge.runtime.evaluation.bench import machine_info, versions
from cxr_edge.runtime.live.watch import result_name
from cxr_edge.runtime.model.model_file import file_sha256


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Sampler:
    """Resident memory of one process, with how many results existed at each sample."""

    def __init__(self, pid: int, results: Path) -> None:
        self.pid, self.results = pid, results
        self.samples: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            rss = rss_mb(self.pid)
            if rss is not None:
                self.samples.append((len(os.listdir(self.results)), rss))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def plan(data_dirs: list[Path], count: int) -> list[tuple[str, bytes, bool]]:
    """(name, content, valid) for every file to drop; every tenth is broken in one of three ways."""
    from cxr_edge.runtime.evaluation.dataset import scan_dataset

    images = [s.path for s in scan_dataset(data_dirs).samples]
    files = []
    for i in range(count):
        source = images[i % len(images)]
        name = f"{i:04d}-{source.name}"
        data = source.read_bytes()
        if i % 10 == 9:
            kind = (i // 10) % 3
            if kind == 0:
                files.append((name, data[: len(data) // 2], False))
            elif kind == 1:
                files.append((f"{i:04d}-report.png", b"findings: none; impression: normal\n" * 20, False))
            else:
                files.append((f"{i:04d}-empty.jpeg", b"", False))
        else:
            files.append((name, data, True))
    return files


def drop(inbox: Path, files: list[tuple[str, bytes, bool]], dropped_at: dict[str, float]) -> None:
    for j, (name, data, _) in enumerate(files):
        if j % 2:
            temp = inbox / f"{name}.part"
            temp.write_bytes(data)
            os.rename(temp, inbox / name)
        else:
            (inbox / name).write_bytes(data)
        dropped_at[name] = time.time()


def start(inbox: Path, out: Path, model: str | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "cxr_edge.cli", "watch", str(inbox), "--out", str(out)]
    return subprocess.Popen(command + (["--model", model] if model else []), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="labelled data (default: $CXR_DATA or the shared set)")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--bursts", type=int, default=10)
    parser.add_argument("--model", default=None, help="model file (default: the shipped INT8 model)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "live")
    args = parser.parse_args()
    from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs

    files = plan(resolve_data_dirs(args.data), args.count)
    size = -(-len(files) // args.bursts)
    bursts = [files[i:i + size] for i in range(0, len(files), size)]
    dropped_at: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        inbox, out = Path(scratch) / "in", Path(scratch) / "out"
        inbox.mkdir()
        watcher = start(inbox, out, args.model)
        assert wait_until(lambda: (out / "results").is_dir(), 60), "watcher did not start"
        half = len(bursts) // 2
        for burst in bursts[:half]:
            drop(inbox, burst, dropped_at)
            time.sleep(0.5)
        # kill -9 while it is working on the next burst
        drop(inbox, bursts[half], dropped_at)
        before = len(os.listdir(out / "results"))
        wait_until(lambda: len(os.listdir(out / "results")) >= before + 3, 30)
        watcher.kill()
        watcher.wait()
        killed_with = {"results": len(os.listdir(out / "results")), "dropped": len(dropped_at),
                       "in_processing": len(os.listdir(out / "processing"))}
        watcher = start(inbox, out, args.model)
        sampler = Sampler(watcher.pid, out / "results")
        for burst in bursts[half + 1:]:
            drop(inbox, burst, dropped_at)
            time.sleep(0.5)
        done = wait_until(lambda: len(os.listdir(out / "results")) >= len(files), 120)
        time.sleep(0.5)
        sampler.stop()
        watcher.send_signal(signal.SIGTERM)
        _, err = watcher.communicate(timeout=60)

        records = [json.loads(p.read_text()) for p in (out / "results").iterdir()]
        by_name: dict[str, list[dict]] = {}
        for record in records:
            by_name.setdefault(Path(record["path"]).name, []).append(record)
        valid = [(n, d) for n, d, ok in files if ok]
        broken = [(n, d) for n, d, ok in files if not ok]
        one_result = sum(1 for n, d in valid if len(by_name.get(n, [])) == 1 and by_name[n][0]["error"] is None
                         and (out / "done" / n).exists() and file_sha256(out / "done" / n) == by_name[n][0]["sha256"])
        failed_ok = sum(1 for n, d in broken if len(by_name.get(n, [])) == 1 and (out / "failed" / n).exists()
                        and (out / "failed" / f"{n}.reason.txt").read_text().strip())
        duplicates = sum(len(v) - 1 for v in by_name.values())
        keys_ok = all((out / "results" / result_name(Path(r["path"]).name, r["sha256"])).exists() for r in records)
        left_behind = len(os.listdir(inbox)) + len(os.listdir(out / "processing"))
        lost = len(files) - len({n for n in by_name} & {n for n, _, _ in files})
        latencies = sorted(1000 * (datetime.fromisoformat(r["finished"]).timestamp() - dropped_at[Path(r["path"]).name])
                           for r in records if r["error"] is None and Path(r["path"]).name in dropped_at)
        samples = sampler.samples
        steady = [rss for n, rss in samples if n >= killed_with["results"] + 20] or [rss for _, rss in samples]
        quarter = max(1, len(steady) // 4)
        memory = {"first_quarter_mb": round(statistics.median(steady[:quarter]), 1),
                  "last_quarter_mb": round(statistics.median(steady[-quarter:]), 1),
                  "peak_mb": round(max(rss for _, rss in samples), 1), "samples": len(samples)}
        memory["growth_mb"] = round(memory["last_quarter_mb"] - memory["first_quarter_mb"], 1)

    figures = {
        "files": len(files), "valid": len(valid), "broken": len(broken), "bursts": len(bursts),
        "all_results_within_timeout": done, "killed_with": killed_with,
        "valid_with_exactly_one_result": one_result, "broken_in_failed_with_reason": failed_ok,
        "duplicate_results": duplicates, "result_names_match_content": keys_ok, "lost": lost,
        "left_in_inbox_or_processing": left_behind, "restart_exit_code": watcher.returncode,
        "drop_to_result_ms": {"median": round(statistics.median(latencies), 1),
                              "p95": round(latencies[int(0.95 * (len(latencies) - 1))], 1)},
        "memory_after_restart": memory,
    }
    passed = (one_result == len(valid) and failed_ok == len(broken) and duplicates == 0 and lost == 0
              and left_behind == 0 and keys_ok and memory["growth_mb"] <= 5.0)
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions(), "model": args.model or "shipped INT8", "figures": figures, "passed": passed}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "watch.json").write_text(json.dumps(record, indent=2) + "\n")
    f, m = figures, memory
    lines = [
        f"Watched folder, {f['files']} files in {f['bursts']} bursts ({f['broken']} broken), one kill -9 after "
        f"{f['killed_with']['results']} results ({f['killed_with']['in_processing']} file(s) in processing), "
        f"{record['model']} model, on {record['machine']['cpu']}, {record['machine']['cores']} cores; "
        f"{record['created']}.", "",
        "| check | result |", "| --- | --- |",
        f"| valid images with exactly one result, in done/ | {f['valid_with_exactly_one_result']} / {f['valid']} |",
        f"| broken files in failed/ with a reason | {f['broken_in_failed_with_reason']} / {f['broken']} |",
        f"| duplicate results | {f['duplicate_results']} |",
        f"| lost | {f['lost']} |",
        f"| left in the inbox or processing/ | {f['left_in_inbox_or_processing']} |",
        f"| drop to result, p50 / p95 | {f['drop_to_result_ms']['median']} / {f['drop_to_result_ms']['p95']} ms |",
        f"| RSS after restart: first / last quarter, peak | {m['first_quarter_mb']} / {m['last_quarter_mb']} MB "
        f"({m['growth_mb']:+.1f} MB), peak {m['peak_mb']} MB |",
        "", f"Bar (every valid image one result, every broken one in failed/ with a reason, 0 lost, memory flat "
            f"within 5 MB): {'met' if passed else 'NOT met'}.",
    ]
    (args.out / "watch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if err.strip() and "Traceback" in err:
        print(err, file=sys.stderr)


if __name__ == "__main__":
    main()
