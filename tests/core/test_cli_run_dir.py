"""A relative ``--run-dir`` inside a Ray job is refused before anything runs (it would be lost)."""

from __future__ import annotations

import pytest

from lmcot import cli


def test_relative_run_dir_inside_a_ray_job_fails_with_the_fix(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what `ray job submit` sets for its entrypoint
    monkeypatch.chdir(tmp_path)
    assert cli.main(["eval", "--config", "tiny", "--run-dir", "runs/x"]) == 2
    err = capsys.readouterr().err
    assert "--run-dir 'runs/x' is relative" in err and "absolute path" in err
    assert not (tmp_path / "runs").exists()  # refused before the run dir was made
    cli.check_run_dir(str(tmp_path / "runs" / "x"))  # an absolute one is fine


def test_relative_run_dir_outside_a_job_is_fine(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    cli.check_run_dir("runs/x")
    with pytest.raises(ValueError, match="absolute"):
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
        cli.check_run_dir("runs/x")
