"""runtime/runs.py: atomic files, staging folders that replace a run folder
only on success, cleanup after killed processes, JSON helpers."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import config
from runtime import runs


def _dead_pid():
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_atomic_write_text_replaces(tmp_path):
    path = tmp_path / "sub" / "out.json"
    runs.atomic_write_text(path, "old")
    runs.atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_atomic_write_keeps_old_file_when_replace_fails(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    path.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        runs.atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    path.write_text("old")
    real = pathlib.Path.write_bytes

    def half_write(self, payload):
        real(self, payload[:2])
        raise OSError("interrupted")

    monkeypatch.setattr(pathlib.Path, "write_bytes", half_write)
    with pytest.raises(OSError, match="interrupted"):
        runs.atomic_write_text(path, "new contents")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_staging_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "runs" / "validation"
    with runs.staging_dir(final) as stage:
        (stage / "a.txt").write_text("1")
    assert (final / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with runs.staging_dir(final) as stage:
            (stage / "a.txt").write_text("2")
            raise RuntimeError("crash")
    assert (final / "a.txt").read_text() == "1"
    assert [p.name for p in final.parent.iterdir()] == ["validation"]


def test_stale_staging_folders_of_dead_processes_are_removed(tmp_path):
    parent = tmp_path / "runs"
    parent.mkdir()
    dead = parent / f".validation.tmp-{_dead_pid()}"
    (dead / "model").mkdir(parents=True)
    alive = parent / f".production.tmp-{os.getppid()}"
    alive.mkdir()
    other = parent / ".keep-me"
    other.mkdir()
    with runs.staging_dir(parent / "validation") as stage:
        (stage / "x").write_text("x")
    names = sorted(p.name for p in parent.iterdir())
    assert names == sorted([alive.name, other.name, "validation"])


def test_checkpoint_dir_removes_dead_processes_checkpoints(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(runs.tempfile, "gettempdir", lambda: str(tmp_path))
    dead = tmp_path / f"{runs.CHECKPOINT_PREFIX}{_dead_pid()}-abc"
    dead.mkdir()
    legacy = tmp_path / f"{runs.CHECKPOINT_PREFIX}xyz"  # no pid: kept
    legacy.mkdir()
    with runs.checkpoint_dir() as folder:
        assert folder.is_dir()
        assert folder.name.startswith(f"{runs.CHECKPOINT_PREFIX}{os.getpid()}-")
    assert not folder.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [legacy.name]


def test_write_run_info_records_config_and_backend(tmp_path):
    cfg = config.tiny()
    runs.write_run_info(cfg, tmp_path)
    saved = json.loads((tmp_path / runs.CONFIG_FILE).read_text())
    assert saved["train"]["epochs"] == cfg.train.epochs
    assert saved["keras_backend"] in ("jax", "tensorflow", "torch")
    assert config.from_dict(saved) == cfg
    assert not (tmp_path / runs.ENCODERS_FILE).exists()


def test_json_helpers():
    payload = {
        "a": np.int64(3),
        "b": np.float32(0.5),
        "c": np.arange(2),
        "d": pathlib.Path("x/y"),
    }
    text = json.dumps(payload, default=runs.json_default)
    assert json.loads(text) == {"a": 3, "b": 0.5, "c": [0, 1], "d": "x/y"}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        json.dumps({"x": object()}, default=runs.json_default)
    assert runs.plain(np.int32(7)) == 7 and type(runs.plain(np.int32(7))) is int
    assert runs.jsonable({1: (np.float64("nan"), np.bool_(True))}) == {
        "1": [None, True]
    }
    assert runs.finite_or_none(float("inf")) is None
