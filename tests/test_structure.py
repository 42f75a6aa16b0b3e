"""The shape of the code: no import cycles, engines described in one table, a CLI that imports nothing heavy."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2

from tests.factories import gradient, tiny_onnx
from tests.fake_engine import ENTRY

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"cxr_edge": REPO / "cxr_edge", "cxr_edge.runtime": REPO / "runtime", "cxr_edge.export": REPO / "export"}
"""setup.cfg's package_dir: where each import package's source lives in the checkout."""


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in ROOTS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            if not any(name.startswith(p + ".") for p in ROOTS if p != package and p.startswith(package + ".")):
                found[name] = path
    return found


def _import_graph() -> dict[str, set[str]]:
    """module -> cxr_edge modules it imports, anywhere in its body (function-local imports count too), plus the
    packages that importing them initialises."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if not target.startswith("cxr_edge"):
                    continue
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # the target and the packages above it that `name` is not in
                    ancestor = ".".join(parts[:i])
                    if ancestor in modules and ancestor != name and not name.startswith(ancestor + "."):
                        graph[name].add(ancestor)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    graph = _import_graph()
    assert "cxr_edge.runtime.model.model_file" in graph and len(graph) > 30
    assert graph["cxr_edge.runtime.model.model_file"] == {"cxr_edge.runtime.errors"}  # the bottom floor
    assert _cycles(graph) == []


ROOMS = ("reading", "model", "outputs", "monitoring", ("live", "scale", "evaluation"))
"""The rooms of the runtime from the bottom up; modules at the top of `runtime/` (errors, files, cache, cpu,
timing, extras) are the floor under all of them. A room imports only from rooms below it and from itself, and the
top rooms (arrival modes, scale-out, measuring) not from each other."""


def _room(module: str) -> tuple[int, str] | None:
    """(height, room) of a runtime module; the floor is height 0."""
    if not module.startswith("cxr_edge.runtime"):
        return None
    parts = module.split(".")
    name = parts[2] if len(parts) > 2 else None
    for height, rooms in enumerate(ROOMS, start=1):
        if name == rooms or (isinstance(rooms, tuple) and name in rooms):
            return height, name
    return 0, "floor"


def test_rooms_import_only_downwards():
    graph = _import_graph()
    wrong = []
    for module, targets in graph.items():
        here = _room(module)
        if here is None:
            continue
        for target in targets:
            there = _room(target)
            if there is None or there[1] == here[1]:
                continue
            if there[0] > here[0] or (there[0] == here[0] and there[1] != here[1]):
                wrong.append(f"{module} -> {target}")
    assert wrong == []
    assert {m.split(".")[2] for m in graph if m.count(".") >= 3 and m.startswith("cxr_edge.runtime.")} >= \
        {"reading", "model", "outputs", "live", "scale", "evaluation"}


def test_no_decoder_imports_the_gate():
    graph = _import_graph()
    readers = [m for m in graph if m.startswith("cxr_edge.runtime.reading")]
    assert "cxr_edge.runtime.reading.images" in readers
    assert {m: graph[m] for m in readers if any(t.startswith("cxr_edge.runtime.model") for t in graph[m])} == {}


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_runtime_never_imports_the_build_side():
    graph = _import_graph()
    offenders = {m: sorted(t for t in targets if t.startswith("cxr_edge.export"))
                 for m, targets in graph.items() if m.startswith("cxr_edge.runtime")}
    assert {m: t for m, t in offenders.items() if t} == {}
    for path in (REPO / "runtime").rglob("*.py"):  # nor by name, through importlib
        assert "\"cxr_edge.export" not in path.read_text(), path  # a module name in a string literal


def test_hashing_a_file_does_not_pull_in_the_engines():
    """Data manifests and calibration sets hash files; they need the bottom floor, not ONNX Runtime."""
    graph = _import_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    for module in ("cxr_edge.export.data", "cxr_edge.export.calibration"):
        assert "cxr_edge.runtime.model.model_file" in reach(module)
        assert not {m for m in reach(module) if m.startswith("cxr_edge.runtime.model.backends")}, module


def test_no_library_module_finds_the_repository_by_walking_up_from_its_file():
    """Data, manifests, benchmark records and model folders are passed in by callers (the Makefile, the CLI)."""
    for folder in ("runtime", "export", "cxr_edge"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            assert ".parent.parent" not in text and '"shared"' not in text, path


def test_importing_the_cli_imports_nothing_heavy():
    code = ("import sys, cxr_edge.cli; heavy = ('numpy', 'cv2', 'torch', 'onnxruntime', 'openvino', 'pydicom'); "
            "print([m for m in heavy if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_new_engine_is_one_table_entry_and_one_module(tmp_path):
    """Register a third engine the way a developer would (one entry in ENGINES, one module), in every process
    (the benchmark measures cold starts in child processes), then use it through predict, bench and info."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(f"""
        from cxr_edge.runtime.model.model_file import ENGINES, Engine
        ENGINES["echo"] = {ENTRY}
    """))
    model = tiny_onnx(tmp_path / "tiny.onnx", size=64)
    image = tmp_path / "chest.png"
    cv2.imwrite(str(image), gradient(200, 160))
    env = os.environ | {"PYTHONPATH": f"{site}{os.pathsep}{REPO}", "CXR_EDGE_CACHE": str(tmp_path / "cache"),
                        "COLUMNS": "200"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cxr_edge.cli", *args], capture_output=True, text=True,
                              timeout=300, env=env)

    predicted = cli("predict", str(image), "--model", str(model), "--backend", "echo", "--format", "jsonl")
    assert predicted.returncode == 0, predicted.stderr
    assert "on echo (requested)" in predicted.stderr
    reference = cli("predict", str(image), "--model", str(model), "--backend", "ort", "--format", "jsonl")
    echo, ort = json.loads(predicted.stdout), json.loads(reference.stdout)
    assert echo["label"] == ort["label"]
    assert all(abs(echo["probabilities"][c] - ort["probabilities"][c]) < 1e-5 for c in ort["probabilities"])

    bench = cli("bench", "--model", str(model), "--backends", "ort,echo", "--runs", "5", "--warmup", "1", "--batch",
                "1", "--json", str(tmp_path / "bench.json"))
    assert bench.returncode == 0, bench.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [(r["backend"], "error" in r) for r in rows] == [("ort", False), ("echo", False)]
    assert rows[1]["load_s"] > 0 and rows[1]["latency_ms"]["p50"] > 0  # its cold start ran in a child process
    assert "Echo" in bench.stdout

    info = cli("info", str(model), "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["model"]["engines"] == ["ort", "openvino", "echo"]
    refused = cli("quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--backend", "echo", "--calib", str(tmp_path))
    assert refused.returncode == 1 and "'echo' is not one of" in refused.stderr  # it makes no INT8 models


def test_the_cli_offers_the_runtime_s_own_choice_lists_not_copies():
    """The choices the CLI offers are the very objects the runtime checks against (defined once, in a module light
    enough for ``--help``); ARCH_NAMES has its twin in tests/export/test_zoo.py."""
    from cxr_edge.cli import common, edge
    from cxr_edge.runtime import choices
    from cxr_edge.runtime.model import gate
    from cxr_edge.runtime.outputs import reports, table

    assert edge.OUTPUT_FORMATS is choices.OUTPUT_FORMATS is table.FORMATS
    assert common.SR_KINDS is choices.SR_KINDS is reports.SR_KINDS
    assert common.GATE_MODES is choices.GATE_MODES is gate.GATE_MODES


def test_no_function_is_longer_than_80_lines():
    """Small, obvious code: a body that needs more lines is several steps that deserve names."""
    long = []
    for folder in ("runtime", "export", "cxr_edge"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                        node.end_lineno - node.lineno + 1 > 80:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert long == []
