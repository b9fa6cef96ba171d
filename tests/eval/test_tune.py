"""eval/tune.py and the `tune` action: search spaces, trials logged as they
finish, the best trial as a preset that reproduces it."""

import json

import optuna
import pytest

import config
import data
import main
from eval import actions as eval_actions
from eval import baselines
from eval import tune as tune_lib


def test_suggest_and_overrides_follow_the_spec():
    trial = optuna.trial.FixedTrial(
        {"model.baseline_params.l2": 30.0, "a.b": 1, "model.dropout": 0.25}
    )
    space = {
        "model.baseline_params.l2": (10.0, 100.0, "log"),
        "a.b": [(128,), (256,)],
        "model.dropout": (0.0, 0.5),
    }
    values = tune_lib.suggest(trial, space)
    assert values == {
        "model.baseline_params.l2": 30.0,
        "a.b": (256,),
        "model.dropout": 0.25,
    }
    assert tune_lib.overrides(values, {"k": 5}) == [
        "a.b=(256,)",
        "model.dropout=0.25",
        "model.baseline_params={'k': 5, 'l2': 30.0}",
    ]


@pytest.mark.parametrize(
    "spec", [(1.0,), (5, 1), (0.0, 1.0, "log"), (1, 2, "lin"), [], "x"]
)
def test_malformed_spaces_are_named(spec):
    with pytest.raises(ValueError, match="tune.space\\['key'\\]"):
        tune_lib.check_space({"key": spec})


def test_tune_model_finds_the_better_setting_and_logs_trials(
    tiny_cfg, tmp_path
):
    dataset = data.load(tiny_cfg.data)
    train, valid, _ = data.split(dataset.interactions)
    best, trials = tune_lib.tune_model(
        lambda p: baselines.ItemKNN(k=p["k"]),
        train,
        valid,
        {"k": [1, 25]},
        trials=6,
        out_dir=tmp_path,
        sampler="random",
    )
    lines = (tmp_path / "trials.jsonl").read_text().splitlines()
    assert len(lines) == len(trials) == 6
    values = {t.params["k"]: t.value for t in trials}
    assert best.value == max(values.values())
    assert json.loads(lines[0])["seconds"] > 0


def test_a_failing_trial_is_recorded_not_fatal(tiny_cfg):
    dataset = data.load(tiny_cfg.data)
    train, valid, _ = data.split(dataset.interactions)

    def build(params):
        if params["k"] == 1:
            raise ValueError("bad k")
        return baselines.ItemKNN(k=params["k"])

    best, trials = tune_lib.tune_model(
        build, train, valid, {"k": [1, 5]}, trials=12, sampler="random", seed=3
    )
    assert best.params["k"] == 5
    assert any(t.error == "ValueError: bad k" for t in trials)


def test_tune_action_writes_a_preset_that_reproduces_it(tiny_cfg):
    cfg = config.override(
        tiny_cfg,
        [
            "tune.models=('ease', 'most_popular')",
            "tune.trials=3",
            "tune.space={'most_popular': {'model.baseline_params.x': [0]}}",
        ],
    )
    with pytest.raises(ValueError):  # MostPopular takes no parameter x
        eval_actions.tune(cfg)
    cfg = config.override(cfg, ["tune.models=('ease',)"])
    summary = eval_actions.tune(cfg)
    best = cfg.run_dir / "tune" / "ease" / "best.json"
    preset = json.loads(best.read_text())
    assert (
        preset["trials"] == 3 and summary["ease"]["value"] == (preset["value"])
    )
    again = config.override(
        config.load_preset(str(best)),
        [
            f"data.path={str(cfg.data.path)!r}",
            "data.item_features.path=None",
            f"output.runs_dir={str(cfg.output.runs_dir)!r}",
        ],
    )
    assert again.model.name == "ease"
    assert again.model.baseline_params == {
        "l2": summary["ease"]["params"]["model.baseline_params.l2"]
    }
    with pytest.raises(SystemExit, match="preset .json file"):
        main.main(["check_data", "--preset", "nowhere.json"])
