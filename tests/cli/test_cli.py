import subprocess
import sys

import click
import pytest

from tests.processes import run_cli


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxr_edge.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_explains_every_command():
    result = _run("--help")
    assert result.returncode == 0
    assert "train" in result.stdout and "Not a medical device" in result.stdout


def test_train_help_names_the_data_setting_and_defaults():
    result = _run("train", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # help text wraps with the terminal width
    assert "$CXR_DATA" in text and "[default: efficientnet_lite0]" in text and "[default: 224;" in text


@pytest.mark.parametrize("args", [["train", "--bogus"], ["no-such-command"], ["train", "--out", "x", "--epochs", "0"]])
def test_usage_errors_exit_1(args):
    result = _run(*args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Error" in result.stderr


def test_missing_data_folder_is_one_line(tmp_path):
    result = _run("train", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"cxr-edge: error: data folder {tmp_path / 'absent'} (from --data) does not exist"


@pytest.mark.parametrize("command", [
    ["train", "--out", "{tmp}/run", "--data", "{data}"],
    ["export", "{tmp}/checkpoint.pt", "-o", "{tmp}/model.onnx"],
    ["quantize", "{model}", "-o", "{tmp}/int8.onnx", "--calib", "{tmp}/calib"],
    ["quantize", "{model}", "-o", "{tmp}/int8.xml", "--backend", "openvino", "--calib", "{tmp}/calib"],
], ids=["train", "export", "quantize-ort", "quantize-openvino"])
def test_build_commands_on_the_edge_install_name_the_extra_before_any_work(tmp_path, model, data_dir, command):
    """Without the export extra each build command says which extra to install, in one line, before it reads or
    decodes anything: a calibration folder full of broken images yields no warnings, only that line."""
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(3):
        (calib / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n-- cut off")
    (tmp_path / "checkpoint.pt").write_bytes(b"not really")
    args = [a.format(tmp=tmp_path, data=data_dir, model=model) for a in command]
    result = run_cli(*args, blocked=("torch", "torchvision", "timm", "nncf", "onnx"))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in lines[0], lines
    assert lines[0].startswith(f"cxr-edge: error: `cxr-edge {command[0]}` needs ")
    assert lines[0].endswith("pip install 'cxr-edge[export]'")
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob("int8*"))


def test_plot_without_matplotlib_fails_before_the_benchmark(model):
    result = run_cli("bench", "--model", model, "--runs", "5", "--plot", "out.png", blocked=("matplotlib",))
    assert result.returncode == 1
    assert result.stderr.strip() == ("cxr-edge: error: --plot needs matplotlib, which this installation lacks: "
                                     "pip install 'cxr-edge[plot]'")
    assert result.stdout == ""  # no table: nothing was measured


def test_debug_shows_the_cause_of_an_error(tmp_path):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"\x08" + b"\xff" * 300)
    plain = _run("predict", str(tmp_path), "--model", str(broken), "--backend", "ort")
    assert plain.returncode == 1 and len(plain.stderr.strip().splitlines()) == 1
    debug = _run("--debug", "predict", str(tmp_path), "--model", str(broken), "--backend", "ort")
    assert "The above exception was the direct cause of the following exception" in debug.stderr
    assert "ModelError" in debug.stderr and "ONNX Runtime cannot load it" in debug.stderr


def _documented_commands() -> list[str]:
    """Every `$ cxr-edge ...` line of the README's and the docs' console examples."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    lines = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for block in re.findall(r"```console\n(.*?)```", page.read_text(), flags=re.S):
            lines += [line[2:].strip() for line in block.splitlines() if line.startswith("$ cxr-edge ")]
    return lines


@pytest.mark.parametrize("line", _documented_commands())
def test_every_documented_command_parses(line):
    """The examples a user copies name commands and options that exist, with values of the right kind."""
    import shlex

    from cxr_edge.cli.main import cli

    words = shlex.split(line)[1:]
    command = cli.get_command(click.Context(cli), words[0])
    assert command is not None, f"no command {words[0]!r}"
    try:
        command.make_context(words[0], words[1:], resilient_parsing=False)
    except click.BadParameter as exc:  # the examples' folders (/srv/...) need not exist here; all else must parse
        assert "does not exist" in str(exc), exc
