import subprocess
import sys

import pytest


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
