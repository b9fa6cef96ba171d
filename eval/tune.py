"""Hyper-parameter search on the validation split, the same for every model.

`tune_model` runs an Optuna study (Akiba et al. 2019): each trial builds a
config from the searched fields, fits on train (Keras families early-stop
on valid), scores valid with the full-ranking metric and reports it. Every
trial is appended to `trials.jsonl` as it finishes; the best becomes a
preset file of `--set` overrides, so

    python main.py train_validation_model --preset <run>/tune/<model>/best.json

reproduces it. Models and baselines get the same number of trials
(`tune.trials`), so a comparison after tuning is fair.

A search space maps a config key to a spec:

- a list of choices, e.g. `"model.hidden_dims": [(128,), (256,)]`;
- `(low, high)` for a uniform float (ints if both are ints);
- `(low, high, "log")` for a log-uniform float (or int).

Keys under `model.baseline_params.<name>` set one baseline parameter.
"""

import dataclasses
import json
import logging
import math
import pathlib
import time

import optuna

from eval import metrics as metrics_lib
from runtime import runs

logger = logging.getLogger(__name__)

# Searched when `tune.space` names nothing for a model; each holds the
# reference choices of BENCHMARK.md or the shipped defaults.
DEFAULT_SPACES = {
    "ease": {"model.baseline_params.l2": (10.0, 10000.0, "log")},
    "itemknn": {
        "model.baseline_params.k": (10, 1000, "log"),
        "model.baseline_params.shrink": (0.0, 100.0),
    },
    "userknn": {"model.baseline_params.k": (10, 1000, "log")},
    "als": {
        "model.baseline_params.factors": (16, 256, "log"),
        "model.baseline_params.regularization": (1e-4, 10.0, "log"),
        "model.baseline_params.alpha": (0.5, 50.0, "log"),
        "model.baseline_params.iterations": (5, 40),
    },
    "bpr": {
        "model.baseline_params.factors": (16, 256, "log"),
        "model.baseline_params.learning_rate": (1e-3, 0.1, "log"),
        "model.baseline_params.regularization": (1e-4, 0.1, "log"),
    },
    "two_tower": {
        "train.learning_rate": (3e-4, 1e-2, "log"),
        "model.dropout": (0.0, 0.5),
        "model.temperature": (0.02, 0.3, "log"),
        "model.history_length": (10, 200, "log"),
        "train.history_dropout": (0.0, 0.5),
    },
    "sasrec": {
        "train.learning_rate": (3e-4, 1e-2, "log"),
        "model.attention_dropout": (0.0, 0.5),
        "model.history_length": (10, 200, "log"),
        "model.attention_blocks": (1, 3),
        "train.positions_per_step": [1024, 2048, 4096, 6400, 12800],
    },
    "vae": {
        "train.learning_rate": (1e-4, 3e-3, "log"),
        "model.dropout": (0.0, 0.7),
        "model.kl_weight": (1e-3, 1.0, "log"),
        "model.latent_dim": (64, 400, "log"),
    },
    "diffusion_cf": {
        "train.learning_rate": (1e-4, 3e-3, "log"),
        "model.noise_scale": (1e-3, 0.3, "log"),
        "model.diffusion_steps": (2, 50, "log"),
        "model.start_step": (0, 1),
    },
    "ncf": {
        "train.learning_rate": (3e-4, 1e-2, "log"),
        "model.dropout": (0.0, 0.5),
        "train.num_negatives": (1, 16),
        "model.l2": (1e-8, 1e-3, "log"),
    },
}


@dataclasses.dataclass
class Trial:
    """One evaluated point of a search."""

    number: int
    params: dict
    value: float | None
    seconds: float
    refit: dict
    error: str | None = None


def suggest(trial, space):
    """Values for every key of `space` from an Optuna `trial`."""
    values = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            index = trial.suggest_categorical(key, list(range(len(spec))))
            values[key] = spec[index]
            continue
        low, high, *flags = spec
        log = "log" in flags
        if isinstance(low, int) and isinstance(high, int):
            values[key] = trial.suggest_int(key, low, high, log=log)
        else:
            values[key] = trial.suggest_float(key, low, high, log=log)
    return values


def overrides(params, base_baseline_params=None):
    """`--set` strings for `params`; `model.baseline_params.<x>` keys are
    merged into one `model.baseline_params={...}` (over the given base)."""
    sets, baseline = [], dict(base_baseline_params or {})
    for key, value in params.items():
        prefix = "model.baseline_params."
        if key.startswith(prefix):
            baseline[key[len(prefix) :]] = value
        else:
            sets.append(f"{key}={value!r}")
    if baseline:
        sets.append(f"model.baseline_params={baseline!r}")
    return sets


def check_space(space):
    """Raise a ValueError naming a malformed entry of a search space."""
    for key, spec in space.items():
        ok = (
            isinstance(spec, list)
            and spec
            or (
                isinstance(spec, tuple)
                and len(spec) in (2, 3)
                and all(isinstance(v, (int, float)) for v in spec[:2])
                and spec[0] < spec[1]
                and (len(spec) == 2 or spec[2] == "log")
                and not (len(spec) == 3 and spec[0] <= 0)
            )
        )
        if not ok:
            raise ValueError(
                f"`tune.space[{key!r}]` must be a non-empty list of choices, "
                "(low, high) or (low, high, 'log') with 0 < low < high for "
                f"log. Received: {spec!r}"
            )


def tune_model(
    build,
    train,
    valid,
    space,
    trials,
    metric="recall@20",
    seed=0,
    timeout_s=None,
    out_dir=None,
    ks=(10, 20),
    sampler="tpe",
):
    """Search `space` for the recommender `build(params)` makes.

    Args:
        build: `(params: dict) -> Recommender`, unfitted.
        train, valid: `data.Interactions`; fit on train, score valid with
            train masked.
        space: search space (see the module docstring).
        trials: int >= 1, trials to run.
        metric: the validation metric to maximise.
        seed: seeds the sampler.
        timeout_s: optional seconds after which no new trial starts.
        out_dir: optional folder for `trials.jsonl` (one line per trial,
            written as it ends).
        ks: cut-offs evaluated.
        sampler: `"tpe"` (default) or `"random"`.

    Returns:
        `(best Trial, all trials)`. A trial that raises is recorded with
        its error and does not stop the search.
    """
    check_space(space)
    if sampler not in ("tpe", "random"):
        raise ValueError(
            f"`tune.sampler` must be 'tpe' or 'random'. Received: {sampler!r}"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed)
        if sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=seed),
    )
    truth, exclude = valid.to_csr(), train.to_csr()
    done = []
    log_path = (
        None if out_dir is None else pathlib.Path(out_dir) / ("trials.jsonl")
    )
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")

    def objective(trial):
        params = suggest(trial, space)
        start = time.perf_counter()
        try:
            rec = build(params)
            rec.fit(train, valid)
            result = metrics_lib.evaluate(
                rec.score, truth, exclude=exclude, ks=ks
            ).summary()
            value, refit, error = (
                float(result[metric]),
                rec.refit_params(),
                None,
            )
        except (ValueError, ArithmeticError, MemoryError) as e:
            value, refit, error = None, {}, f"{type(e).__name__}: {e}"
        record = Trial(
            trial.number,
            params,
            value,
            time.perf_counter() - start,
            refit,
            error,
        )
        done.append(record)
        logger.info(
            "trial %d: %s=%s in %.1fs %s",
            trial.number,
            metric,
            "failed" if value is None else f"{value:.4f}",
            record.seconds,
            params,
        )
        if log_path is not None:
            with log_path.open("a") as f:
                f.write(
                    json.dumps(runs.jsonable(dataclasses.asdict(record))) + "\n"
                )
        return -math.inf if value is None else value

    study.optimize(objective, n_trials=trials, timeout=timeout_s or None)
    finished = [t for t in done if t.value is not None]
    if not finished:
        raise ValueError(
            f"Every one of the {len(done)} trials failed; the first: "
            f"{done[0].error if done else 'none ran'}"
        )
    return max(finished, key=lambda t: t.value), done
