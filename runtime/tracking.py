"""Experiment tracking with MLflow: the config as params, per-epoch and
final metrics, figures, reports and the model folder of each train action.

Off by default (`track.mlflow=False`): then MLflow is never imported and
every hook here is a no-op. With `--set track.mlflow=True`, each tracked
action (`train_validation_model`, `train_production_model`) becomes one
MLflow run named `<run_name>/<stage>` in the experiment `track.experiment`,
stored at `track.tracking_uri`: a local file store (`file:./mlruns`) by
default, so no server is needed; browse it with
`mlflow ui --backend-store-uri ./mlruns`, or point the URI at a tracking
server (`http://...`) or a database (`sqlite:///mlflow.db`, which needs the
full `mlflow` package).

Keras fits inside a tracked action log every epoch's logs (loss, the
`val_*` ranking metrics, learning rate) through `epoch_callbacks()`, which
`KerasRecommender.fit` adds to its callbacks.
"""

import contextlib
import functools
import json
import logging
import math
import os
import pathlib
import re

import keras

import config as config_lib

logger = logging.getLogger(__name__)

# MLflow caps a param value at 6000 characters.
_MAX_PARAM_CHARS = 6000
_active = []  # the Tracker of the run in progress, innermost last


class Tracker:
    """Logs into one active MLflow run.

    Args:
        mlflow: the imported `mlflow` module.
        run_id: str, the run to log into.
        main_model: str, the model whose metrics get the short keys
            (`test/ndcg_at_20`); other models' go under `baselines/<name>/`.
    """

    def __init__(self, mlflow, run_id, main_model):
        self.mlflow = mlflow
        self.run_id = run_id
        self.main_model = main_model
        self._labels = {}

    def log_params(self, params: dict) -> None:
        """Log a flat `{name: value}` dict; long values are cut to MLflow's
        limit (the full config is also logged as `reports/config.json`)."""
        self.mlflow.log_params(
            {k: str(v)[:_MAX_PARAM_CHARS] for k, v in params.items()}
        )

    def log_metrics(self, metrics: dict, step=None) -> None:
        """Log the finite numbers of `metrics` (names made MLflow-safe:
        `recall@20` becomes `recall_at_20`)."""
        clean = {
            metric_name(k): float(v)
            for k, v in metrics.items()
            if _is_number(v) and math.isfinite(float(v))
        }
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    def log_outputs(self, folder) -> None:
        """Log what a train action wrote into `folder`: final metrics from
        `metrics.json`, `*.png` figures under `figures/`, the model folder
        under `model/`, and the JSON/Markdown reports under `reports/`."""
        folder = pathlib.Path(folder)
        metrics_path = folder / "metrics.json"
        if metrics_path.exists():
            self.log_metrics(
                final_metrics(
                    json.loads(metrics_path.read_text()), self.main_model
                )
            )
        for figure in sorted(folder.rglob("*.png")):
            parent = figure.parent.relative_to(folder)
            self.mlflow.log_artifact(
                str(figure), artifact_path=str("figures" / parent)
            )
        for report in sorted(folder.glob("*.json")) + sorted(
            folder.glob("*.md")
        ):
            self.mlflow.log_artifact(str(report), artifact_path="reports")
        if (folder / "model").is_dir():
            self.mlflow.log_artifacts(
                str(folder / "model"), artifact_path="model"
            )
        logger.info("logged %s to MLflow run %s", folder, self.run_id)

    def unique_label(self, label: str) -> str:
        """`label`, or `label#2`, `label#3`... when a run fits twice under
        the same label (e.g. NCF pre-training), so curves never mix."""
        count = self._labels.get(label, 0) + 1
        self._labels[label] = count
        return label if count == 1 else f"{label}#{count}"


class EpochMetrics(keras.callbacks.Callback):
    """Logs every numeric entry of the epoch logs as `<label>/<name>` with
    step = epoch number (from 1). Put it after callbacks that add to the
    logs (`RankingMonitor`), so their metrics are included."""

    def __init__(self, tracker, label):
        super().__init__()
        self.tracker = tracker
        self.label = label

    def on_epoch_end(self, epoch, logs=None):
        self.tracker.log_metrics(
            {f"{self.label}/{k}": v for k, v in (logs or {}).items()},
            step=epoch + 1,
        )


def tracked(stage: str):
    """Decorator for a train action `fn(cfg, ...)` that writes its outputs
    to `cfg.run_dir / stage`: runs it inside `run(cfg, stage)` and, when it
    succeeds, logs that folder (`Tracker.log_outputs`)."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(cfg, *args, **kwargs):
            with run(cfg, stage) as tracker:
                result = fn(cfg, *args, **kwargs)
                if tracker is not None:
                    tracker.log_outputs(cfg.run_dir / stage)
            return result

        return wrapper

    return decorate


@contextlib.contextmanager
def run(cfg, stage: str):
    """An MLflow run `<run_name>/<stage>` with the flattened config as
    params and the backend, model and stage as tags.

    Yields:
        a `Tracker`, or `None` when `cfg.track.mlflow` is false (nothing is
        imported or written then). A run that raises ends as FAILED.
    """
    if not cfg.track.mlflow:
        yield None
        return
    mlflow = _import_mlflow(cfg.track.tracking_uri)
    mlflow.set_tracking_uri(cfg.track.tracking_uri)
    mlflow.set_experiment(cfg.track.experiment)
    with mlflow.start_run(
        run_name=f"{cfg.run_dir.name}/{stage}",
        nested=mlflow.active_run() is not None,
    ) as active:
        tracker = Tracker(mlflow, active.info.run_id, cfg.model.name)
        mlflow.set_tags(
            {
                "stage": stage,
                "model": cfg.model.name,
                "keras_backend": keras.backend.backend(),
            }
        )
        tracker.log_params(config_params(cfg))
        logger.info(
            "MLflow run %s (%s/%s) in %s",
            active.info.run_id,
            cfg.track.experiment,
            active.info.run_name,
            cfg.track.tracking_uri,
        )
        _active.append(tracker)
        try:
            yield tracker
        finally:
            _active.remove(tracker)


def epoch_callbacks(label: str) -> list:
    """`[EpochMetrics]` logging under `label` when a tracked run is in
    progress, else `[]`: what `KerasRecommender.fit` adds to its
    callbacks."""
    if not _active:
        return []
    tracker = _active[-1]
    return [EpochMetrics(tracker, tracker.unique_label(label))]


def final_metrics(report: dict, main_model: str) -> dict:
    """The scalar results of a `metrics.json`: for a validation report, the
    valid and test summaries (`valid/recall@20`, ...; other models under
    `baselines/<name>/`) and the selected epoch; otherwise its top-level
    numbers (production: fit seconds, epochs, interactions)."""
    if "models" not in report:
        return {k: v for k, v in report.items() if _is_number(v)}
    out = {}
    for name, entry in report["models"].items():
        prefix = "" if name == main_model else f"baselines/{name}/"
        for split in ("valid", "test"):
            summary = (entry.get(split) or {}).get("summary", {})
            for metric, value in summary.items():
                out[f"{prefix}{split}/{metric}"] = value
        if entry.get("best_epoch") is not None:
            out[f"{prefix}best_epoch"] = entry["best_epoch"]
    return out


def config_params(cfg) -> dict:
    """Every leaf of the config as `{"train.epochs": "40", ...}`: tuples,
    paths and dicts as their text."""
    params = {}
    for path in config_lib.field_paths(type(cfg)):
        value = cfg
        for part in path.split("."):
            value = getattr(value, part)
        params[path] = (
            json.dumps(value, default=str, sort_keys=True)
            if isinstance(value, dict)
            else str(value)
        )
    return params


def metric_name(name: str) -> str:
    """An MLflow-safe metric name: `@` becomes `_at_`, other characters
    MLflow refuses become `_`."""
    name = name.replace("@", "_at_")
    return re.sub(r"[^0-9A-Za-z_\-. :/]", "_", name)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _import_mlflow(uri: str):
    # MLflow 3 refuses its file store unless this opt-out is set; the file
    # store is what lets `track.mlflow=True` work with no server or database.
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:  # MLflow is optional: never imported unless track.mlflow is on
        import mlflow
    except ImportError as e:
        raise ImportError(
            "`track.mlflow=True` needs MLflow: pip install "
            "'mlflow-skinny>=2.12'"
        ) from e
    return mlflow
