"""Bad input is reported in one line without a traceback (common/errors.py), by the commands themselves."""

import subprocess
import sys

import pytest

from common.errors import one_line_errors
from common.paths import REPO


def raise_in_setup(error: Exception, *kinds: type) -> None:
    with one_line_errors(*kinds):
        raise error


def test_bad_input_is_one_line_and_status_1(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as stopped:
        raise_in_setup(ValueError("optim.schedule='x'; use cosine, wsd or constant"))
    assert stopped.value.code == 1
    assert capsys.readouterr().err == "error: optim.schedule='x'; use cosine, wsd or constant\n"


def test_only_rank_0_prints_and_the_full_error_switch_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit):
        raise_in_setup(FileNotFoundError("no such folder"))
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="bad"):
        raise_in_setup(ValueError("bad"))


def test_other_exceptions_keep_their_traceback():
    with pytest.raises(KeyError):
        raise_in_setup(KeyError("a bug, not bad input"))
    with pytest.raises(RuntimeError):
        raise_in_setup(RuntimeError("named kinds only"), ModuleNotFoundError)


def test_train_refuses_a_bad_choice_in_one_line(prepared_data, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "train", f"data.path={prepared_data}", f"out_dir={tmp_path}",
                           "logging.progress=plain", "trainer.max_steps=1"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "Error executing job" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "error: logging.progress='plain' is unknown; use one of auto, bar, lines"
