"""Every backend runs the CLI, and a model saved under one backend loads,
predicts the same top-10 and re-fits under the others.

A process cannot switch Keras backend, so the other backends run in
subprocesses. The suite runs once per backend (tests/run_backends.sh), so
all directed pairs (saved on A, loaded on B) are covered.
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import config
import data
import main
import recommenders
from serving import retrieval
from tests.conftest import ROOT

BACKEND_PACKAGES = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}
INSTALLED = [
    b
    for b, pkg in BACKEND_PACKAGES.items()
    if importlib.util.find_spec(pkg) is not None
]
OTHERS = [b for b in INSTALLED if b != keras.backend.backend()]

LOAD_SCRIPT = """
import json, sys
import numpy as np
import data, config
import recommenders
from serving import retrieval
cfg = config.from_dict(json.loads(open(sys.argv[1]).read()))
dataset = data.load(cfg.data)
users = np.arange(dataset.interactions.num_users)
for name in sys.argv[3:]:
    rec = recommenders.load(f"{sys.argv[2]}/{name}")
    items, _ = retrieval.top_k_by_score(
        rec, users, dataset.interactions.to_csr(), 10, progress=False)
    np.save(f"{sys.argv[2]}/{name}-top10.npy", items)
    history = rec.fit(dataset.interactions, None, epochs=1, warm_start=True)
    print("REFIT_LOSS", name, history["loss"][0])
"""


def _run(args, backend, timeout=600):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_smoke_on_this_backend(tiny_cfg):
    backend = keras.backend.backend()
    result = _run(
        [
            "main.py",
            "smoke",
            "--set",
            f"data.path={str(tiny_cfg.data.path)!r}",
            "--set",
            "data.item_features.path=None",
            "--set",
            f"output.runs_dir={str(tiny_cfg.output.runs_dir)!r}",
            "--set",
            "train.batch_size=32",
        ],
        backend,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"backend={backend}" in result.stderr
    recs = json.loads(
        (
            tiny_cfg.output.runs_dir
            / "sasrec-smoke"  # the shipped default model
            / "recommendations.json"
        ).read_text()
    )
    assert recs["backend"] == backend and len(recs["recommendations"]) == 24


MODELS = ("two_tower", "ncf", "sasrec", "vae", "diffusion_cf")


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Every Keras family trained and saved once on this backend."""
    import config
    from tests.conftest import tiny_config

    tmp_path = tmp_path_factory.mktemp("portable")
    cfg = tiny_config(tmp_path)
    dataset = data.load(cfg.data)
    users = np.arange(dataset.interactions.num_users)
    top10 = {}
    for name in MODELS:
        run_cfg = config.override(cfg, [f"model.name={name!r}"])
        rec = recommenders.build(run_cfg, dataset)
        rec.fit(dataset.interactions, None, epochs=2)
        rec.save(tmp_path / name)
        top10[name], _ = retrieval.top_k_by_score(
            rec, users, dataset.interactions.to_csr(), 10, progress=False
        )
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(config.to_dict(cfg)))
    return tmp_path, cfg_path, top10


@pytest.mark.skipif(not OTHERS, reason="only one Keras backend installed")
@pytest.mark.parametrize("other", OTHERS)
def test_saved_models_load_on_other_backend(saved_models, other):
    folder, cfg_path, here = saved_models
    result = _run(
        ["-c", LOAD_SCRIPT, str(cfg_path), str(folder), *MODELS], other
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in MODELS:
        assert f"REFIT_LOSS {name}" in result.stdout
        there = np.load(folder / f"{name}-top10.npy")
        same_list = np.mean(np.all(here[name] == there, axis=1))
        overlap = np.mean(
            [len(set(a) & set(b)) / 10 for a, b in zip(here[name], there)]
        )
        # Float differences across backends may swap near-tied neighbours.
        assert same_list >= 0.9, (name, same_list, overlap)
        assert overlap >= 0.97, (name, same_list, overlap)


def test_cli_help_unknown_action_and_bad_override(capsys):
    with pytest.raises(SystemExit):
        main.parse_args(["--help"])
    out = capsys.readouterr().out
    for action in main.ACTIONS:
        assert action in out
    with pytest.raises(SystemExit):
        main.parse_args(["fly"])
    err = capsys.readouterr().err
    assert "fly" in err and "train_validation_model" in err
    with pytest.raises(SystemExit, match="train.epoch"):
        main.main(["smoke", "--set", "train.epoch=3"])
    with pytest.raises(SystemExit, match="train.epochs"):
        main.main(["smoke", "--set", "train.epochs='many'"])


def test_cli_reports_missing_file_without_traceback(tmp_path):
    with pytest.raises(SystemExit, match="Data file not found"):
        main.main(
            [
                "train_validation_model",
                "--set",
                f"data.path={str(tmp_path / 'nope.csv')!r}",
                "--set",
                f"output.runs_dir={str(tmp_path)!r}",
            ]
        )


def test_cli_action_options_reach_only_their_action(monkeypatch, capsys):
    calls = []

    def run(cfg, probe_user=None, probe_n=3):
        calls.append((probe_user, probe_n))

    monkeypatch.setitem(
        main.ACTIONS,
        "fake",
        main.Action(
            run,
            "test action",
            (("--probe-user", {}), ("--probe-n", {"type": int, "default": 3})),
        ),
    )
    main.main(["fake", "--probe-user", "7", "--probe-n", "5", "-q"])
    main.main(["fake", "-q"])
    assert calls == [("7", 5), (None, 3)]
    with pytest.raises(SystemExit):
        main.parse_args(["smoke", "--probe-user", "7"])
    assert "--probe-user belongs to fake" in capsys.readouterr().err


def test_cli_rejects_bad_config_before_reading_data(tmp_path):
    missing = str(tmp_path / "nope.csv")
    for override, message in (
        ("model.name='foo'", "model.name.*foo.*two_tower"),
        ("data.split='bar'", "data.split.*bar"),
        ("train.batch_size=0", "train.batch_size.*>= 1"),
        ("train.epochs=-3", "train.epochs.*>= 1"),
    ):
        # The data file does not exist: the config error must come first.
        with pytest.raises(SystemExit, match=message):
            main.main(
                [
                    "train_validation_model",
                    "--set",
                    override,
                    "--set",
                    f"data.path={missing!r}",
                ]
            )


def test_backend_is_read_from_the_command_line():
    assert config.backend_from_argv(["x", "--set", "backend=torch"]) == "torch"
    assert config.backend_from_argv(["x", "--set=backend='tensorflow'"]) == (
        "tensorflow"
    )
    assert config.backend_from_argv(["x", "--set", "train.epochs=3"]) == "jax"
    assert config.backend_from_argv(["x", "--set", "backend=cuda"]) == "jax"


def test_known_failures_are_one_line_and_debug_shows_the_traceback(tmp_path):
    args = [
        "main.py",
        "check_data",
        "-q",
        "--set",
        f"data.path={str(tmp_path / 'nope.csv')!r}",
    ]
    result = _run(args, keras.backend.backend(), timeout=300)
    assert result.returncode == 1
    assert "error: Data file not found" in result.stderr
    assert "Traceback" not in result.stderr
    debug = _run(args + ["--debug"], keras.backend.backend(), timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


QUIET_SCRIPT = """
import runpy, sys
sys.argv = ["main.py", "check_data", "-q", "--set", sys.argv[1]]
try:
    runpy.run_path("main.py", run_name="__main__")
finally:
    print("TENSORFLOW_IMPORTED", "tensorflow" in sys.modules)
"""


def test_start_up_is_quiet_on_this_backend(tmp_path):
    """No TensorFlow import under JAX or torch, and no TensorFlow start-up
    lines under TensorFlow."""
    backend = keras.backend.backend()
    result = _run(
        ["-c", QUIET_SCRIPT, f"output.runs_dir={str(tmp_path)!r}"], backend, 300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = "TENSORFLOW_IMPORTED True" in result.stdout
    assert imported == (backend == "tensorflow")
    for noise in ("oneDNN", "cudart", "absl::InitializeLog"):
        assert noise not in result.stderr, result.stderr[-2000:]
