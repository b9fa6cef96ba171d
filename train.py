"""Fit, evaluate, save and predict for any recommender; defines no model.

The four template actions live here (`train_validation_model`,
`train_production_model`, `compute_predictions`,
`exploratory_data_analysis`), plus `benchmark` and `smoke`. Keras model
families are wrapped by `KerasRecommender`, which gives them the same
`fit` / `score` / `save` / `load` surface as the baselines in
`eval/baselines.py`, so evaluation and prediction never special-case a model.
Only this module and `main.py` read the `Config`.
"""

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import time

import keras
import numpy as np
from keras import ops

import config as config_lib
import data
import distribution as distribution_lib
import tracking
from eval import metrics as metrics_lib
from eval import stats as stats_lib
from models.multimodal import MultimodalItemEncoder
from models.ncf import NCF
from models.two_tower import TwoTower

logger = logging.getLogger(__name__)

KERAS_MODELS = ("two_tower", "ncf", "multimodal")
DEFAULT_LOSS = {"two_tower": "softmax", "ncf": "bce"}
_PREDICT_BATCH = 4096
_PAIR_BUDGET_BYTES = 64 * 2**20  # per predict call of a pairwise scorer
TABLE_METRICS = tuple(
    f"{m}@{k}" for k in (10, 20) for m in ("recall", "ndcg", "hr", "mrr")
)


# ---------------------------------------------------------------------------
# The Keras recommender
# ---------------------------------------------------------------------------


class KerasRecommender:
    """A Keras model family behind the common Recommender interface.

    Args:
        model_cfg: `config.ModelConfig`.
        train_cfg: `config.TrainConfig`.
        item_features: optional `data.FeatureTable` for the item tower
            (for `multimodal`: `item_content.build_item_features`'s table,
            whose `stats["layout"]` sizes the item encoder).
        user_features: optional `data.FeatureTable` for the user tower.
        ks: cut-offs of the per-epoch validation metrics.
        memory_budget_mb: bounds the user block scored at once.
        seed: int.
        multimodal_cfg: `config.MultimodalConfig` for `multimodal` (its
            `base` picks the two-tower or NCF family).
        scale_cfg: `config.ScaleConfig`: devices, precision and batch
            workers for `fit` (default: one device, float32, inline).
    """

    def __init__(
        self,
        model_cfg,
        train_cfg,
        item_features=None,
        user_features=None,
        ks=(10, 20),
        memory_budget_mb=256,
        seed=0,
        multimodal_cfg=None,
        scale_cfg=None,
    ):
        if model_cfg.name not in KERAS_MODELS:
            raise ValueError(
                f"`model.name` must be one of {KERAS_MODELS} for a Keras "
                f"model. Received: {model_cfg.name!r}"
            )
        self.model_cfg = model_cfg
        self.train_cfg = train_cfg
        self.scale_cfg = scale_cfg or config_lib.ScaleConfig()
        self.multimodal_cfg = multimodal_cfg or config_lib.MultimodalConfig()
        # The model family: multimodal plugs into two-tower or NCF.
        self.family = (
            self.multimodal_cfg.base
            if model_cfg.name == "multimodal"
            else model_cfg.name
        )
        if self.family not in ("two_tower", "ncf"):
            raise ValueError(
                "`multimodal.base` must be 'two_tower' or 'ncf'. Received: "
                f"{self.family!r}"
            )
        self.item_layout = None
        if model_cfg.name == "multimodal":
            if item_features is None or "layout" not in item_features.stats:
                raise ValueError(
                    "`model.name='multimodal'` needs the item content "
                    "table of `item_content.build_item_features`."
                )
            self.item_layout = dict(item_features.stats["layout"])
        wants_items = (
            model_cfg.name == "multimodal"
            or (
                model_cfg.item_input != "id"
                if model_cfg.name == "ncf"
                else model_cfg.use_item_features
            )
        )
        if model_cfg.name == "ncf" and wants_items and item_features is None:
            raise ValueError(
                f"`model.item_input={model_cfg.item_input!r}` needs item "
                "features: set `data.item_features.path` (or use 'id')."
            )
        self.item_features = (
            item_features.values
            if item_features is not None and wants_items
            else None
        )
        self.user_features = (
            user_features.values
            if user_features is not None and model_cfg.use_user_features
            else None
        )
        self.ks = tuple(ks)
        self.memory_budget_mb = memory_budget_mb
        self.seed = seed
        self.model = None
        self.history_table = None
        self.best_epoch = None
        self.fit_history = {}
        self._item_cache = None

    # --- Recommender interface -------------------------------------------

    def fit(
        self,
        train,
        valid=None,
        epochs=None,
        checkpoint_dir=None,
        warm_start=False,
    ):
        """Train on `train`; with `valid`, stop and select on the full-ranking
        validation metric (`train.monitor`, e.g. recall@20).

        With `warm_start`, training continues from the current weights (e.g.
        a model loaded from another backend) instead of a fresh model; the
        optimizer always starts fresh, since a saved torch optimizer state
        does not load on JAX/TensorFlow.

        Returns:
            dict: per-epoch history (loss, val_* metrics, learning rate).
        """
        with distribution_lib.training_scope(
            self.scale_cfg, self.train_cfg.batch_size
        ):
            return self._fit(train, valid, epochs, checkpoint_dir, warm_start)

    def _fit(self, train, valid, epochs, checkpoint_dir, warm_start):
        mc, tc = self.model_cfg, self.train_cfg
        self.set_history(train)
        reuse = warm_start and self.model is not None
        if reuse and (self.model.num_users, self.model.num_items) != (
            train.num_users,
            train.num_items,
        ):
            raise ValueError(
                "`warm_start` needs the same users and items as the saved "
                f"model: {(self.model.num_users, self.model.num_items)}. "
                f"Received: {(train.num_users, train.num_items)}"
            )
        if not reuse and mc.name == "ncf" and mc.pretrain:
            self._pretrain_ncf(train, epochs or tc.epochs)
        elif not reuse:
            self.model = self._build(train.num_users, train.num_items)
        self._compile(self.model)
        counts = train.item_counts()
        loss = self.loss
        if loss == "mse":
            labels = data.scaled_labels(train.value)
        elif loss == "bce":
            labels = data.graded_labels(
                train.value, mc.like_threshold, mc.dislike_threshold
            )
        else:
            labels = None
        two_tower = self.family == "two_tower"
        batches = data.InteractionBatches(
            train,
            tc.batch_size,
            seed=self.seed,
            history=self.history_table if two_tower else None,
            history_dropout=tc.history_dropout,
            user_features=self.user_features if two_tower else None,
            item_features=self.item_features,
            num_negatives=tc.num_negatives if loss in ("bpr", "bce") else 0,
            sampler=data.negative_sampler(
                counts, tc.negative_sampling, tc.popularity_alpha
            ),
            item_logq=data.item_log_probs(counts)
            if two_tower and mc.use_logq
            else None,
            labels=labels,
            workers=self.scale_cfg.workers,
            use_multiprocessing=self.scale_cfg.use_multiprocessing,
        )
        batches = distribution_lib.shard_for_process(batches)
        epochs = epochs or tc.epochs
        callbacks = []
        checkpoint = None
        with contextlib.ExitStack() as stack:
            if valid is not None and len(valid):
                monitor = "val_" + tc.monitor
                if checkpoint_dir is None:
                    checkpoint_dir = stack.enter_context(_temp_dir())
                checkpoint = pathlib.Path(checkpoint_dir) / "best.weights.h5"
                callbacks = [
                    RankingMonitor(self, train, valid, self.ks, tc.monitor,
                                   self.memory_budget_mb),
                    keras.callbacks.ModelCheckpoint(
                        str(checkpoint),
                        monitor=monitor,
                        mode="max",
                        save_best_only=True,
                        save_weights_only=True,
                    ),
                    keras.callbacks.EarlyStopping(
                        monitor=monitor,
                        mode="max",
                        patience=tc.early_stopping_patience,
                    ),
                    keras.callbacks.ReduceLROnPlateau(
                        monitor=monitor,
                        mode="max",
                        factor=tc.reduce_lr_factor,
                        patience=tc.reduce_lr_patience,
                        min_lr=tc.min_learning_rate,
                    ),
                ]
            stage = "select" if callbacks else "fit"
            callbacks += tracking.epoch_callbacks(f"{mc.name}/{stage}")
            logger.info(
                "fitting %s: users=%d items=%d examples=%d epochs<=%d "
                "batch=%d steps/epoch=%d",
                mc.name,
                train.num_users,
                train.num_items,
                len(train),
                epochs,
                tc.batch_size,
                len(batches),
            )
            history = self.model.fit(
                batches, epochs=epochs, callbacks=callbacks, verbose=tc.verbose
            )
            self.fit_history = {
                k: [float(v) for v in vals]
                for k, vals in history.history.items()
            }
            if checkpoint is not None and checkpoint.exists():
                scores = self.fit_history["val_" + tc.monitor]
                self.best_epoch = int(np.argmax(scores)) + 1
                self.model.load_weights(str(checkpoint))
                logger.info(
                    "best epoch %d: val %s=%.4f",
                    self.best_epoch,
                    tc.monitor,
                    max(scores),
                )
            else:
                self.best_epoch = len(self.fit_history.get("loss", [])) or epochs
        self._item_cache = None
        return self.fit_history

    def score_pairs(self, user_idx, item_idx):
        """Scores of aligned (user, item) pairs: NCF logits or two-tower
        cosines, in chunks bounded like `score`."""
        user_idx = np.asarray(user_idx, np.int32)
        item_idx = np.asarray(item_idx, np.int32)
        if self.family != "ncf":
            users = self.user_embeddings(user_idx)
            return np.sum(users * self.item_embeddings()[item_idx], axis=1)
        inputs = {"user": user_idx, "item": item_idx}
        inputs.update(self._item_side(item_idx))
        return self._predict(inputs)["logit"]

    def refit_params(self):
        """What a refit on more data should reuse: the selected epoch."""
        return {"epochs": self.best_epoch}

    @property
    def loss(self):
        """The configured loss, with `auto` resolved for the family."""
        loss = self.model_cfg.loss
        return DEFAULT_LOSS[self.family] if loss == "auto" else loss

    def score(self, user_idx, item_idx=None):
        """`(len(user_idx), num_items or len(item_idx))` float32 scores:
        cosines for two-tower (one matrix product), logits for NCF (pairs
        scored in chunks bounded by `_PAIR_BUDGET_BYTES`)."""
        user_idx = np.asarray(user_idx, np.int32)
        if self.family == "ncf":
            return self._score_pairs(user_idx, item_idx)
        items = self.item_embeddings()
        if item_idx is not None:
            items = items[np.asarray(item_idx)]
        users = self.user_embeddings(user_idx)
        return users @ items.T

    def set_history(self, interactions):
        """Use these interactions as every user's history at scoring time."""
        if self.model_cfg.use_history:
            self.history_table = data.history_matrix(
                interactions, self.model_cfg.history_length
            )
        self._item_cache = None

    # --- embeddings -------------------------------------------------------

    def item_embeddings(self):
        """`(num_items, embedding_dim)` float32, cached until weights change."""
        if self._item_cache is None:
            n = self.model.num_items
            inputs = {"item": np.arange(n, dtype=np.int32)}
            if self.item_features is not None:
                inputs["item_features"] = self.item_features
            self._item_cache = self._predict(inputs)["item"]
        return self._item_cache

    def user_embeddings(self, user_idx):
        inputs = {"user": np.asarray(user_idx, np.int32)}
        if self.history_table is not None:
            inputs["history"] = self.history_table[user_idx]
        if self.user_features is not None:
            inputs["user_features"] = self.user_features[user_idx]
        return self._predict(inputs)["user"]

    # --- persistence ------------------------------------------------------

    def save(self, path):
        """Write `model.keras`, `tables.npz` and `recommender.json` into the
        folder `path` (created; callers stage it for atomicity)."""
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save(path / "model.keras")
        tables = {}
        for name in ("history_table", "item_features", "user_features"):
            if getattr(self, name) is not None:
                tables[name] = getattr(self, name)
        np.savez(path / "tables.npz", **tables)
        info = {
            "kind": "keras",
            "model": config_lib.to_dict(self.model_cfg),
            "train": config_lib.to_dict(self.train_cfg),
            "ks": list(self.ks),
            "memory_budget_mb": self.memory_budget_mb,
            "seed": self.seed,
            "best_epoch": self.best_epoch,
            "backend": keras.backend.backend(),
        }
        if self.item_layout is not None:
            info["multimodal"] = config_lib.to_dict(self.multimodal_cfg)
            info["item_layout"] = self.item_layout
        data.atomic_write_text(path / "recommender.json", json.dumps(info))

    @classmethod
    def load(cls, path):
        """Load a saved recommender on any backend. The model is loaded with
        `compile=False`: an optimizer saved under torch cannot be restored
        on JAX/TF, and prediction needs none (fit() compiles afresh)."""
        path = pathlib.Path(path)
        info = json.loads((path / "recommender.json").read_text())
        with np.load(path / "tables.npz") as npz:
            tables = {name: npz[name] for name in npz.files}
        content = None
        if "item_layout" in info:
            content = data.FeatureTable(
                values=tables["item_features"],
                names=[],
                missing=np.zeros(len(tables["item_features"]), bool),
                stats={"layout": info["item_layout"]},
            )
        rec = cls(
            config_lib.from_dict(info["model"], config_lib.ModelConfig),
            config_lib.from_dict(info["train"], config_lib.TrainConfig),
            item_features=content,
            ks=info["ks"],
            memory_budget_mb=info["memory_budget_mb"],
            seed=info["seed"],
            multimodal_cfg=config_lib.from_dict(
                info["multimodal"], config_lib.MultimodalConfig
            )
            if "multimodal" in info
            else None,
        )
        rec.model = keras.saving.load_model(path / "model.keras", compile=False)
        for name, table in tables.items():
            setattr(rec, name, table)
        rec.best_epoch = info["best_epoch"]
        return rec

    # --- private ----------------------------------------------------------

    def _score_pairs(self, user_idx, item_idx=None):
        items = (
            np.arange(self.model.num_items, dtype=np.int32)
            if item_idx is None
            else np.asarray(item_idx, np.int32)
        )
        item_side = self._item_side(items)
        width = 16 + sum(4 * v.shape[1] for v in item_side.values())
        pairs = max(len(items), _PAIR_BUDGET_BYTES // width)
        users_per_chunk = max(1, pairs // len(items))
        out = np.empty((len(user_idx), len(items)), np.float32)
        for start in range(0, len(user_idx), users_per_chunk):
            chunk = user_idx[start : start + users_per_chunk]
            inputs = {
                "user": np.repeat(chunk, len(items)),
                "item": np.tile(items, len(chunk)),
            }
            for key, values in item_side.items():
                inputs[key] = np.tile(values, (len(chunk), 1))
            logits = self._predict(inputs)["logit"]
            out[start : start + len(chunk)] = logits.reshape(
                len(chunk), len(items)
            )
        return out

    def _item_side(self, item_idx):
        """NCF's item inputs for `item_idx`: the item features, or, with an
        item encoder (multimodal), its output computed once per item and
        cached like the two-tower item embeddings."""
        if self.item_features is None:
            return {}
        if getattr(self.model, "item_encoder", None) is None:
            return {"item_features": self.item_features[item_idx]}
        if self._item_cache is None:
            self._item_cache = self._predict(
                {"item_features": self.item_features}
            )["item_vector"]
        return {"item_vector": self._item_cache[item_idx]}

    def _pretrain_ncf(self, train, epochs):
        """He et al. 2017, 3.4.1: train GMF-only and MLP-only models, then
        start NeuMF from their weights."""
        parts = {}
        for branch in ("gmf", "mlp"):
            sub = KerasRecommender(
                dataclasses.replace(
                    self.model_cfg, pretrain=False
                ),
                self.train_cfg,
                ks=self.ks,
                memory_budget_mb=self.memory_budget_mb,
                seed=self.seed,
            )
            sub.item_features = self.item_features
            sub.model = sub._build(
                train.num_users, train.num_items, only=branch
            )
            logger.info("pre-training the %s branch", branch.upper())
            sub.fit(train, None, epochs=epochs, warm_start=True)
            parts[branch] = sub.model
        self.model = NCF.from_pretrained(parts["gmf"], parts["mlp"])

    def _build(self, num_users, num_items, only=None):
        mc = self.model_cfg
        encoder = self._item_encoder()
        if self.family == "ncf":
            num_features = (
                0 if self.item_features is None
                else self.item_features.shape[1]
            )
            item_input = mc.item_input
            if encoder is not None:
                item_input = (
                    "both" if self.multimodal_cfg.use_item_id else "features"
                )
            return NCF(
                num_users=num_users,
                num_items=num_items,
                item_input=item_input,
                num_item_features=num_features,
                gmf_dim=mc.gmf_dim,
                mlp_embedding_dim=mc.id_embedding_dim,
                mlp_dims=mc.mlp_dims,
                dropout=mc.dropout,
                l2=mc.l2,
                use_gmf=only != "mlp",
                use_mlp=only != "gmf",
                loss=self.loss,
                seed=self.seed,
                item_encoder=encoder,
            )
        return TwoTower(
            num_users=num_users,
            num_items=num_items,
            embedding_dim=mc.embedding_dim,
            id_embedding_dim=mc.id_embedding_dim,
            hidden_dims=mc.hidden_dims,
            dropout=mc.dropout,
            l2=mc.l2,
            loss=self.loss,
            temperature=mc.temperature,
            use_logq=mc.use_logq,
            history_length=mc.history_length if mc.use_history else 0,
            use_user_id=mc.use_user_id,
            num_user_features=0
            if self.user_features is None
            else self.user_features.shape[1],
            num_item_features=0
            if self.item_features is None
            else self.item_features.shape[1],
            seed=self.seed,
            item_encoder=encoder,
            use_item_id=encoder is None or self.multimodal_cfg.use_item_id,
        )

    def _item_encoder(self):
        """The multimodal item encoder sized by the content layout, or
        None for the other families."""
        if self.item_layout is None:
            return None
        mm = self.multimodal_cfg
        return MultimodalItemEncoder(
            text_dim=self.item_layout["text_dim"],
            image_dim=self.item_layout["image_dim"],
            numeric_dim=self.item_layout["numeric_dim"],
            image_size=self.item_layout["image_size"],
            embedding_dim=mm.embedding_dim,
            fusion=mm.fusion,
            num_heads=mm.num_heads,
            hidden_dims=mm.projection_dims,
            cnn_filters=mm.cnn_filters,
            dropout=self.model_cfg.dropout,
            alignment_weight=mm.alignment_weight,
            alignment_temperature=mm.alignment_temperature,
            seed=self.seed,
            name="item_encoder",
        )

    def _compile(self, model):
        tc = self.train_cfg
        optimizers = {
            "adam": lambda: keras.optimizers.Adam(tc.learning_rate),
            "adamw": lambda: keras.optimizers.AdamW(
                tc.learning_rate, weight_decay=tc.weight_decay
            ),
            "sgd": lambda: keras.optimizers.SGD(tc.learning_rate, momentum=0.9),
        }
        if tc.optimizer not in optimizers:
            raise ValueError(
                f"`train.optimizer` must be one of {sorted(optimizers)}. "
                f"Received: {tc.optimizer!r}"
            )
        # torch.compile on CPU costs more than it saves for models this
        # small, and is not what `jit_compile` means to Keras users.
        jit = tc.jit_compile and keras.backend.backend() != "torch"
        model.compile(optimizer=optimizers[tc.optimizer](), jit_compile=jit)

    def _predict(self, inputs):
        # Pad to a power-of-two batch so that every call reuses one of a
        # few compiled shapes: under XLA each new shape is a new compile,
        # which costs far more than the padded rows.
        rows = len(next(iter(inputs.values())))
        batch = min(_PREDICT_BATCH, 1 << max(0, (rows - 1).bit_length()))
        # Under keras.distribution every device takes an equal batch slice.
        replicas = distribution_lib.batch_multiple()
        batch = -(-batch // replicas) * replicas
        padded = -(-rows // batch) * batch
        if padded != rows:
            inputs = {
                k: np.concatenate(
                    [v, np.repeat(v[-1:], padded - rows, axis=0)]
                )
                for k, v in inputs.items()
            }
        out = self.model.predict(inputs, batch_size=batch, verbose=0)
        # Mixed-precision models return bfloat16/float16; score in float32.
        return {k: v[:rows].astype(np.float32) for k, v in out.items()}


class RankingMonitor(keras.callbacks.Callback):
    """Adds full-ranking validation metrics (`val_recall@20`, ...) to the
    epoch logs, so EarlyStopping / ModelCheckpoint / ReduceLROnPlateau can
    follow what we actually care about rather than the training loss. Must
    come before those callbacks in the list."""

    def __init__(self, recommender, train, valid, ks, monitor, budget_mb):
        super().__init__()
        self.recommender = recommender
        self.truth = valid.to_csr()
        self.exclude = train.to_csr()
        self.ks = ks
        self.monitor = monitor
        self.block = metrics_lib.block_size_for(train.num_items, budget_mb)

    def on_epoch_end(self, epoch, logs=None):
        self.recommender._item_cache = None
        result = metrics_lib.evaluate(
            self.recommender.score,
            self.truth,
            exclude=self.exclude,
            ks=self.ks,
            block_size=self.block,
        )
        summary = result.summary()
        if self.monitor not in summary:
            raise ValueError(
                f"`train.monitor` {self.monitor!r} is not a computed metric; "
                f"choose one of {sorted(result.per_user)}."
            )
        for name in result.per_user:
            if name.split("@")[0] in ("recall", "ndcg", "hr", "mrr"):
                logs["val_" + name] = summary[name]
        logger.info(
            "epoch %d: val %s=%.4f ndcg@%d=%.4f",
            epoch + 1,
            self.monitor,
            summary[self.monitor],
            max(self.ks),
            summary.get(f"ndcg@{max(self.ks)}", float("nan")),
        )
        self.recommender._item_cache = None


# ---------------------------------------------------------------------------
# Building recommenders
# ---------------------------------------------------------------------------


def make_recommender(cfg, dataset):
    """A fresh, unfitted recommender for `cfg.model.name`."""
    name = cfg.model.name
    if name in KERAS_MODELS:
        item_features = dataset.item_features
        if name == "multimodal":
            import item_content

            item_features = item_content.item_features_from_config(
                cfg, dataset.item_ids
            )
        return KerasRecommender(
            cfg.model,
            cfg.train,
            item_features=item_features,
            user_features=dataset.user_features,
            ks=cfg.eval.ks,
            memory_budget_mb=cfg.eval.memory_budget_mb,
            seed=cfg.seed,
            multimodal_cfg=cfg.multimodal,
            scale_cfg=cfg.scale,
        )
    if name == "persona":
        import personas

        return personas.make_reranker(cfg, dataset)
    from eval import baselines

    if name not in baselines.BASELINES:
        known = KERAS_MODELS + ("persona",) + tuple(baselines.BASELINES)
        raise ValueError(
            f"Unknown `model.name` {name!r}. Choose one of {sorted(known)}."
        )
    params = dict(cfg.model.baseline_params)
    return baselines.make_baseline(name, **params)


def load_recommender(path):
    """Load whatever `save()` wrote into the folder `path`."""
    path = pathlib.Path(path)
    info_path = path / "recommender.json"
    if info_path.exists() and json.loads(info_path.read_text()).get(
        "kind"
    ) == "keras":
        return KerasRecommender.load(path)
    if info_path.exists() and json.loads(info_path.read_text()).get(
        "kind"
    ) == "persona":
        from models.persona import PersonaReranker

        return PersonaReranker.load(path, load_first_stage=load_recommender)
    from eval import baselines

    return baselines.Baseline.load(path)


def evaluate_split(recommender, truth, exclude, cfg, item_popularity=None):
    """Full-ranking metrics of a fitted recommender on one split."""
    return metrics_lib.evaluate(
        recommender.score,
        truth.to_csr(),
        exclude=exclude.to_csr(),
        ks=cfg.eval.ks,
        block_size=metrics_lib.block_size_for(
            truth.num_items, cfg.eval.memory_budget_mb
        ),
        item_popularity=item_popularity,
    )


# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------


@tracking.tracked("validation")
def train_validation_model(cfg):
    """Protocol P1 end to end: fit on train with early stopping on the
    validation ranking metric, refit on train+valid for the chosen number of
    epochs, report test metrics beside the configured baselines."""
    dataset = data.load(cfg.data)
    train, valid, test = data.split(
        dataset.interactions,
        cfg.data.split,
        cfg.data.valid_fraction,
        cfg.data.test_fraction,
        seed=cfg.seed,
    )
    out = cfg.run_dir / "validation"
    with staging_dir(out) as stage:
        write_run_info(cfg, dataset, stage)
        names = [cfg.model.name] + [
            b for b in cfg.eval.baselines if b != cfg.model.name
        ]
        results, models = {}, {}
        for name in names:
            # model.baseline_params belong to the main model only.
            run_cfg = cfg if name == cfg.model.name else config_lib.override(
                cfg, [f"model.name={name!r}", "model.baseline_params={}"]
            )
            results[name], models[name] = _validate_and_test(
                run_cfg, dataset, train, valid, test, stage
            )
        main_model = models[cfg.model.name]
        main_model.save(stage / "model")
        report = {
            "protocol": "valid: fit on train, mask train; test: refit on "
            "train+valid with the chosen epochs, mask train+valid",
            "split": {
                "method": cfg.data.split,
                "train": len(train),
                "valid": len(valid),
                "test": len(test),
            },
            "models": results,
        }
        _add_significance(report, cfg)
        table = format_table(results, cfg.eval.ks)
        _write_report(stage, report, table)
    print(table)
    for line in report.get("significance", []):
        print(line)
    logger.info("wrote %s", out)
    return report


@tracking.tracked("production")
def train_production_model(cfg):
    """Fit on every interaction with the epoch count the validation run
    chose, and save the model for `compute_predictions`."""
    dataset = data.load(cfg.data)
    metrics_path = cfg.run_dir / "validation" / "metrics.json"
    epochs = None
    if cfg.model.name in KERAS_MODELS:
        if not metrics_path.exists():
            raise FileNotFoundError(
                f"{metrics_path} not found: run `python main.py "
                "train_validation_model` first; the production model reuses "
                "the epoch count it selects."
            )
        report = json.loads(metrics_path.read_text())
        epochs = report["models"][cfg.model.name].get("best_epoch")
        if not epochs:
            raise ValueError(
                f"{metrics_path} has no best epoch for {cfg.model.name!r}; "
                "rerun train_validation_model with this model."
            )
    out = cfg.run_dir / "production"
    with staging_dir(out) as stage:
        write_run_info(cfg, dataset, stage)
        rec = make_recommender(cfg, dataset)
        start = time.perf_counter()
        if epochs:
            rec.fit(dataset.interactions, None, epochs=epochs)
        else:
            rec.fit(dataset.interactions, None)
        seconds = time.perf_counter() - start
        rec.save(stage / "model")
        data.atomic_write_text(
            stage / "metrics.json",
            json.dumps(
                {
                    "model": cfg.model.name,
                    "epochs": epochs,
                    "interactions": len(dataset.interactions),
                    "fit_seconds": seconds,
                },
                indent=2,
            ),
        )
    logger.info(
        "production model %s: interactions=%d epochs=%s fit=%.1fs -> %s",
        cfg.model.name,
        len(dataset.interactions),
        epochs,
        seconds,
        out,
    )


def compute_predictions(cfg):
    """Top-K unseen items for every user, with raw ids and scores, written
    atomically to `<run>/recommendations.json`."""
    model_dir = cfg.run_dir / "production" / "model"
    if not model_dir.exists():
        raise FileNotFoundError(
            f"{model_dir} not found: run `python main.py "
            "train_production_model` first."
        )
    encoders_path = cfg.run_dir / "production" / "encoders.json"
    encoders = json.loads(encoders_path.read_text())
    user_ids = np.asarray(encoders["user_ids"])
    item_ids = np.asarray(encoders["item_ids"])
    dataset = data.load(cfg.data)
    if not (
        np.array_equal(dataset.user_ids, user_ids)
        and np.array_equal(dataset.item_ids, item_ids)
    ):
        raise ValueError(
            f"The data at {cfg.data.path} no longer matches the production "
            f"model's id maps ({encoders_path}): retrain with "
            "train_production_model."
        )
    rec = load_recommender(model_dir)
    start = time.perf_counter()
    if getattr(rec, "family", None) == "two_tower":
        import retrieval  # dot products: on-device top-K or a FAISS index

        items, scores, _ = retrieval.recommend(
            rec,
            np.arange(len(user_ids)),
            dataset.interactions.to_csr(),
            cfg.output.top_k,
            cfg.scale,
            cfg.eval.memory_budget_mb,
            seed=cfg.seed,
        )
    else:
        items, scores = recommend(
            rec,
            np.arange(len(user_ids)),
            dataset.interactions.to_csr(),
            cfg.output.top_k,
            cfg.eval.memory_budget_mb,
        )
    seconds = time.perf_counter() - start
    recs = {
        str(user_ids[u]): [
            {"item": _json_id(item_ids[i]), "score": round(float(s), 6)}
            for i, s in zip(items[u], scores[u])
            if np.isfinite(s)
        ]
        for u in range(len(user_ids))
    }
    payload = {
        "model": cfg.model.name,
        "k": cfg.output.top_k,
        "num_users": len(user_ids),
        "backend": keras.backend.backend(),
        "seconds": round(seconds, 3),
        "recommendations": recs,
    }
    path = cfg.run_dir / "recommendations.json"
    data.atomic_write_text(path, json.dumps(payload))
    logger.info(
        "recommendations for users=%d k=%d in %.2fs -> %s",
        len(user_ids),
        cfg.output.top_k,
        seconds,
        path,
    )
    return payload


def recommend(rec, users, exclude, k, budget_mb=256, progress=True):
    """Top-`k` items per user with `exclude`'s items masked, scored in user
    blocks sized to `budget_mb` and ranked on device with `ops.top_k`; the
    dense mask exists for one block only, never for users x items."""
    num_items = exclude.shape[1]
    block = metrics_lib.block_size_for(num_items, budget_mb)
    k = min(k, num_items)
    out_items = np.zeros((len(users), k), np.int64)
    out_scores = np.zeros((len(users), k), np.float32)
    bar = keras.utils.Progbar(len(users)) if progress else None
    for start in range(0, len(users), block):
        chunk = np.asarray(users[start : start + block])
        scores = rec.score(chunk)
        sub = exclude[chunk]
        rows = np.repeat(np.arange(len(chunk)), np.diff(sub.indptr))
        mask = np.zeros(scores.shape, bool)
        mask[rows, sub.indices] = True
        masked = ops.where(mask, -np.inf, ops.convert_to_tensor(scores))
        top_scores, top_items = ops.top_k(masked, k)
        out_items[start : start + len(chunk)] = ops.convert_to_numpy(top_items)
        out_scores[start : start + len(chunk)] = ops.convert_to_numpy(
            top_scores
        )
        if bar is not None:
            bar.add(len(chunk))
    return out_items, out_scores


def exploratory_data_analysis(cfg):
    """Figures and a JSON summary of the raw and the filtered data."""
    import eda

    dataset = data.load(cfg.data)
    out = cfg.run_dir / "eda"
    out.mkdir(parents=True, exist_ok=True)
    summary = eda.run_eda(dataset.raw, dataset.filtered_frame(), out)
    logger.info("EDA figures -> %s", out)
    return summary


def benchmark(cfg):
    """Every model in `eval.benchmark_models` on protocol `eval.protocol`:
    baselines tuned on small grids, Keras models with early stopping on
    valid; Markdown, JSON and a bar chart with CIs in
    `<run>/benchmark-<protocol>/`."""
    from eval import benchmark as bench
    from eval import protocols

    protocol = cfg.eval.protocol.lower()
    split = protocols.load_protocol(protocol)
    grids = bench.default_baseline_grids(protocol)
    item_features = None
    if split.dataset is not None:
        item_features = split.dataset.item_features
    candidates = {}
    for name in cfg.eval.benchmark_models:
        if name in KERAS_MODELS:
            candidates[name] = bench.Candidate(
                factory=_keras_factory(cfg, name, item_features),
                label=name,
            )
        elif name in grids:
            candidates[name] = grids[name]
        else:
            candidates[name] = bench.Candidate.baseline(name)
    out = cfg.run_dir / f"benchmark-{protocol}"
    with staging_dir(out) as stage:
        write_run_info_config(cfg, stage)
        report = bench.run_benchmark(
            split,
            candidates,
            stage,
            ks=cfg.eval.ks,
            select_metric=cfg.train.monitor,
            num_bootstrap=cfg.eval.num_bootstrap,
            seed=cfg.seed,
        )
    print((out / "benchmark.md").read_text())
    logger.info("benchmark %s -> %s", protocol, out)
    return report


def evaluate_cold_items(cfg):
    """Cold-start evaluation: hold out `eval.cold_item_fraction` of the
    items entirely (no training interactions), fit on the rest (selecting
    on a chrono valid split of it), then rank only the held-out items for
    every user who interacted with them. The model is compared with Random
    and with a content-profile baseline on the same users; id-only models
    cannot rank such items (their embeddings never trained), so the
    comparison is meaningful for models that read item features."""
    from eval import baselines

    dataset = data.load(cfg.data)
    train_, valid, test = data.split(
        dataset.interactions,
        "cold_items",
        cfg.data.valid_fraction,
        cfg.eval.cold_item_fraction,
        seed=cfg.seed,
    )
    cold = np.unique(test.item)
    truth = test.to_csr()[:, cold]
    scorers = {}
    rec = make_recommender(cfg, dataset)
    rec.fit(train_, valid)
    scorers[cfg.model.name] = rec
    random = baselines.Random(seed=cfg.seed)
    random.fit(train_)
    scorers["random"] = random
    if dataset.item_features is not None:
        content = baselines.ContentProfile(dataset.item_features.values)
        content.fit(train_)
        scorers["content_profile"] = content
    results, per_user = {}, {}
    for name, scorer in scorers.items():
        result = metrics_lib.evaluate(
            lambda users, s=scorer: s.score(users, cold),
            truth,
            ks=cfg.eval.ks,
        )
        per_user[name] = result
        results[name] = {
            "summary": result.to_json_dict()["summary"],
            "ci": {
                m: stats_lib.bootstrap_ci(
                    result.per_user[m], cfg.eval.num_bootstrap, seed=cfg.seed
                )
                for m in TABLE_METRICS
            },
        }
    lines = []
    main = per_user[cfg.model.name]
    for name, other in per_user.items():
        if name == cfg.model.name:
            continue
        for metric in (f"ndcg@{min(cfg.eval.ks)}", f"recall@{max(cfg.eval.ks)}"):
            test_result = stats_lib.paired_test(
                main.per_user[metric], other.per_user[metric], seed=cfg.seed
            )
            results[name].setdefault("paired_test_vs_model", {})[metric] = {
                k: (bool(v) if isinstance(v, (bool, np.bool_)) else v)
                for k, v in test_result.items()
            }
            lines.append(
                stats_lib.describe_difference(
                    test_result, cfg.model.name, name, metric
                )
            )
    report = {
        "protocol": "cold items: rank only held-out items (no training "
        "interactions) for users who interacted with them",
        "cold_items": int(len(cold)),
        "train": len(train_),
        "valid": len(valid),
        "test": len(test),
        "models": results,
        "significance": lines,
    }
    out = cfg.run_dir / "cold_items"
    with staging_dir(out) as stage:
        write_run_info_config(cfg, stage)
        table = _cold_table(results, cfg.eval.ks)
        _write_report(stage, report, table)
    print(table)
    for line in lines:
        print(line)
    return report


def smoke(cfg):
    """A quick end-to-end run of the template actions with a tiny model
    (the `tiny` preset applied over `cfg`) into `<run_name>-smoke`, for
    installation checks."""
    cfg = config_lib.override(
        config_lib.tiny(cfg),
        [f"output.run_name={cfg.output.run_name + '-smoke'!r}"],
    )
    train_validation_model(cfg)
    train_production_model(cfg)
    payload = compute_predictions(cfg)
    logger.info("smoke run ok on backend=%s", keras.backend.backend())
    return payload


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def staging_dir(final):
    """Yield a temporary sibling folder; on success it replaces `final` in
    two renames, on failure it is deleted and `final` is left untouched."""
    final = pathlib.Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
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


def write_run_info(cfg, dataset, folder):
    """The resolved config and the id encoders, beside every artifact."""
    write_run_info_config(cfg, folder)
    data.save_encoders(dataset, pathlib.Path(folder) / "encoders.json")


def write_run_info_config(cfg, folder):
    info = config_lib.to_dict(cfg)
    info["keras_backend"] = keras.backend.backend()
    data.atomic_write_text(
        pathlib.Path(folder) / "config.json", json.dumps(info, indent=2)
    )


def format_table(results, ks):
    """Markdown table of test metrics (with 95% CIs) and valid recall."""
    cols = [m for m in TABLE_METRICS if int(m.split("@")[1]) in ks]
    head = "| model | split | " + " | ".join(cols) + " | fit s |"
    lines = [head, "|" + "---|" * (len(cols) + 3)]
    for name, res in results.items():
        for split_name in ("valid", "test"):
            summary = res[split_name]["summary"]
            cells = []
            for m in cols:
                cell = f"{summary[m]:.4f}"
                ci = res[split_name].get("ci", {}).get(m)
                if ci:
                    cell += f" [{ci['low']:.4f}, {ci['high']:.4f}]"
                cells.append(cell)
            fit = res.get(f"fit_seconds_{split_name}", float("nan"))
            lines.append(
                f"| {name} | {split_name} | " + " | ".join(cells)
                + f" | {fit:.1f} |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _validate_and_test(cfg, dataset, train, valid, test, stage):
    """Fit on train (select on valid), then refit on train+valid and test."""
    pop_train = train.item_counts()
    rec = make_recommender(cfg, dataset)
    start = time.perf_counter()
    rec.fit(train, valid)
    fit_valid = time.perf_counter() - start
    valid_result = evaluate_split(rec, valid, train, cfg, pop_train)
    refit = getattr(rec, "refit_params", lambda: {})()
    train_valid = train.concat(valid)
    rec_test = make_recommender(cfg, dataset)
    start = time.perf_counter()
    rec_test.fit(train_valid, None, **refit)
    fit_test = time.perf_counter() - start
    test_result = evaluate_split(
        rec_test, test, train_valid, cfg, train_valid.item_counts()
    )
    ci = {
        m: stats_lib.bootstrap_ci(
            test_result.per_user[m], cfg.eval.num_bootstrap, seed=cfg.seed
        )
        for m in TABLE_METRICS
        if m in test_result.per_user
    }
    logger.info(
        "%s: valid recall@20=%.4f test ndcg@20=%.4f",
        cfg.model.name,
        valid_result.summary().get("recall@20", float("nan")),
        test_result.summary().get("ndcg@20", float("nan")),
    )
    scorer = None
    if cfg.model.name == "ncf":
        scorer = _evaluate_scorer(cfg, rec_test, test, train_valid, stage)
    entry = {
        "scorer": scorer,
        "valid": valid_result.to_json_dict(),
        "test": {**test_result.to_json_dict(), "ci": ci},
        "best_epoch": refit.get("epochs"),
        "fit_seconds_valid": fit_valid,
        "fit_seconds_test": fit_test,
        "history": getattr(rec, "fit_history", {}),
        "_per_user_test": test_result,
    }
    return entry, rec


def _write_report(folder, report, table):
    """`metrics.json` (everything) and `metrics.md` (the table)."""
    data.atomic_write_text(
        folder / "metrics.json",
        json.dumps(report, indent=2, default=_json_default),
    )
    data.atomic_write_text(folder / "metrics.md", table + "\n")


def _cold_table(results, ks):
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    lines = ["| model | " + " | ".join(cols) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for name, res in results.items():
        cells = [
            f"{res['ci'][m]['mean']:.4f} [{res['ci'][m]['low']:.4f}, "
            f"{res['ci'][m]['high']:.4f}]"
            for m in cols
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _evaluate_scorer(cfg, rec, test, known, stage):
    """NCF as a pointwise scorer: ROC-AUC with a bootstrap CI, ROC curve and
    calibration plot on held-out test pairs plus one sampled unseen item per
    pair (label 0); with `model.like_threshold`, test ratings below it are
    negatives too."""
    from eval import scorer as scorer_lib

    exclude = known.concat(test).to_csr()
    user, item, label = scorer_lib.held_out_pairs(
        test, exclude, num_negatives=1, seed=cfg.seed,
        like_threshold=cfg.model.like_threshold,
    )
    logits = rec.score_pairs(user, item)
    probs = 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))
    result = scorer_lib.evaluate_scorer(
        label, probs, out_dir=stage / "scorer",
        num_bootstrap=cfg.eval.num_bootstrap, seed=cfg.seed,
        name=cfg.model.name,
    )
    logger.info(
        "%s scorer on %d held-out pairs: AUC=%.4f [%.4f, %.4f] ECE=%.4f",
        cfg.model.name, len(label), result["auc"],
        result["auc_ci"]["low"], result["auc_ci"]["high"], result["ece"],
    )
    return result


def _add_significance(report, cfg):
    """Paired test of the main model against each baseline on test, then
    drop the per-user arrays from the JSON."""
    models = report["models"]
    main = models[cfg.model.name]["_per_user_test"]
    lines = []
    for name, entry in models.items():
        other = entry.pop("_per_user_test")
        if name == cfg.model.name:
            continue
        metric = f"ndcg@{max(cfg.eval.ks)}"
        if not np.array_equal(main.users, other.users):
            continue
        result = stats_lib.paired_test(
            main.per_user[metric], other.per_user[metric], seed=cfg.seed
        )
        entry["paired_test_vs_main"] = {
            k: (bool(v) if isinstance(v, (bool, np.bool_)) else v)
            for k, v in result.items()
        }
        lines.append(
            stats_lib.describe_difference(
                result, cfg.model.name, name, metric
            )
        )
    models[cfg.model.name].pop("_per_user_test", None)
    report["significance"] = lines


def _keras_factory(cfg, name, item_features):
    """`params -> KerasRecommender` for the benchmark: `epochs` (from a
    refit) sets `train.epochs`, other keys set `model.*` fields."""

    def factory(params):
        sets = [f"model.name={name!r}"]
        for key, value in params.items():
            section = "train" if key == "epochs" else "model"
            sets.append(f"{section}.{key}={value!r}")
        run_cfg = config_lib.override(cfg, sets)
        return KerasRecommender(
            run_cfg.model,
            run_cfg.train,
            item_features=item_features,
            ks=run_cfg.eval.ks,
            memory_budget_mb=run_cfg.eval.memory_budget_mb,
            seed=run_cfg.seed,
        )

    return factory


@contextlib.contextmanager
def _temp_dir():
    import tempfile

    with tempfile.TemporaryDirectory(prefix="recsys-ckpt-") as d:
        yield pathlib.Path(d)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _json_id(value):
    return value.item() if isinstance(value, np.generic) else value
