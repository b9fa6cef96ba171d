"""Run folders and the files in them: one place for the plumbing every action
and library shares.

An action writes into `runs/<run_name>/<stage>/`. It builds the folder under
a temporary sibling name (`staging_dir`) and renames it into place only when
it succeeds, so a failed or interrupted run never damages the previous
run's outputs. Single files are written the same way (`atomic_write_text`,
`atomic_write_bytes`, `write_json`). Staging folders and checkpoint folders
left by processes that no longer run are removed the next time a run starts.

Nothing here knows about models or data: library code at any layer may
import it.
"""

import contextlib
import json
import logging
import math
import os
import pathlib
import re
import shutil
import tempfile
import zipfile

import keras
import numpy as np

import config as config_lib

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
ENCODERS_FILE = "encoders.json"
CHECKPOINT_PREFIX = "recsys-ckpt-"
# `.<name>.tmp-<pid>` and `.<name>.old-<pid>` siblings of a run folder.
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)$")


@contextlib.contextmanager
def staging_dir(final):
    """Yield a temporary sibling folder of `final`; on success it replaces
    `final` in two renames, on failure it is deleted and `final` is left
    untouched. Stale staging folders of dead processes are removed first."""
    final = pathlib.Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final.parent)
    stage = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(stage, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def checkpoint_dir():
    """A temporary folder for in-training checkpoints (deleted on exit);
    those of dead processes are removed first."""
    root = pathlib.Path(tempfile.gettempdir())
    remove_stale(root, prefix=CHECKPOINT_PREFIX)
    with tempfile.TemporaryDirectory(
        prefix=f"{CHECKPOINT_PREFIX}{os.getpid()}-"
    ) as folder:
        yield pathlib.Path(folder)


def remove_stale(folder, prefix=None):
    """Delete the staging folders (`.x.tmp-<pid>`, `.x.old-<pid>`) in
    `folder`, or with `prefix` the `<prefix><pid>-*` folders, whose process
    is no longer running. Returns the removed paths."""
    folder = pathlib.Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        pid = _owner_pid(path.name, prefix)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
        logger.info("removed %s left by process %d", path, pid)
    return removed


def write_run_info(cfg, folder, dataset=None):
    """The resolved config (`config.json`, with the Keras backend) and, given
    a `data.Dataset`, its id encoders (`encoders.json`) in `folder`."""
    folder = pathlib.Path(folder)
    info = config_lib.to_dict(cfg)
    info["keras_backend"] = keras.backend.backend()
    write_json(folder / CONFIG_FILE, info)
    if dataset is not None:
        atomic_write_text(
            folder / ENCODERS_FILE, json.dumps(dataset.encoders())
        )


class ArtifactError(ValueError):
    """A file a run wrote is missing its content, damaged or unreadable;
    the message names the file and the command that rebuilds it."""


def read_json(path, rebuild):
    """The JSON in `path`.

    Args:
        rebuild: the command that writes the file, named in errors (e.g.
            "python main.py train_production_model").

    Raises:
        FileNotFoundError: no file there.
        ArtifactError: the file is not valid JSON (truncated, damaged).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `{rebuild}` first.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(
            f"{path} is damaged ({e}): rebuild it with `{rebuild}`."
        ) from None


@contextlib.contextmanager
def reading(path):
    """Turn any failure to read the artefact `path` inside the block into
    one `ArtifactError` naming it (a missing file included)."""
    try:
        yield
    except ArtifactError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        what = (
            "missing"
            if isinstance(e, FileNotFoundError)
            else ("damaged or unreadable")
        )
        detail = str(e).strip().splitlines()
        raise ArtifactError(
            f"{path} is {what} ({type(e).__name__}: "
            f"{(detail[0] if detail else '')[:200]})."
        ) from None


def atomic_write_text(path, text: str) -> None:
    """Write `text` to a temporary sibling, then rename over `path`, so a
    crash never leaves a half-written file where a good one was."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path, payload: bytes) -> None:
    """`atomic_write_text` for bytes."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # no stray half-written temp file


def write_json(path, payload, indent=2) -> None:
    """`payload` as JSON (NumPy values converted by `json_default`),
    written atomically."""
    atomic_write_text(
        path, json.dumps(payload, indent=indent, default=json_default)
    )


def json_default(value):
    """`json.dumps(default=...)` for NumPy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def plain(value):
    """A NumPy scalar as the Python value, so JSON and messages read `1`,
    not `np.int64(1)`; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def finite_or_none(value):
    """A number as a JSON-safe Python value: bools and ints kept, floats
    kept when finite, else `None`."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def jsonable(value):
    """A JSON-safe deep copy: NumPy values to Python, non-finite floats to
    `None`, tuples to lists, keys to strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_, int, np.integer, float, np.floating)):
        return finite_or_none(value)
    return plain(value)


def _owner_pid(name, prefix):
    if prefix is None:
        match = _STAGING.match(name)
        return int(match["pid"]) if match else None
    if not name.startswith(prefix):
        return None
    head = name[len(prefix) :].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
