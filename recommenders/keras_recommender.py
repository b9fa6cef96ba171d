"""Keras model families behind the one `Recommender` interface.

`KerasRecommender` trains every Keras family with one `fit()`: batches
(`data.InteractionBatches` of (user, item) interactions unless the family
makes its own, e.g. next-item windows or interaction-vector rows),
full-ranking validation metrics after every epoch (`RankingMonitor`), and
EarlyStopping, ModelCheckpoint and ReduceLROnPlateau following them. What
differs between families is a `KerasSpec`: how to build the network, how
it scores (dot products of user and item vectors, a logit per pair, or the
whole catalog from the user's interaction vector), its default loss and
what it reads. Families register their spec in `recommenders/families.py`;
nothing here names a family.
"""

import dataclasses
import json
import logging
import pathlib
from typing import Callable

import keras
import numpy as np
import scipy.sparse as sp

import config as config_lib
import data
from eval import metrics as metrics_lib
from models.multimodal import MultimodalItemEncoder
from runtime import distribution as distribution_lib
from runtime import runs
from runtime import tracking

logger = logging.getLogger(__name__)

SCORINGS = ("dot", "pairwise", "vector")
_PREDICT_BATCH = 4096
_PAIR_BUDGET_BYTES = 64 * 2**20  # per predict call of a pairwise scorer
_VECTOR_BUDGET_BYTES = 64 * 2**20  # per predict call of a vector scorer
_USER_TABLE = "user_table__"  # tables.npz keys of `user_tables`
_HISTORY_ROWS = "history_rows__"  # tables.npz keys of `history_rows`


@dataclasses.dataclass(frozen=True)
class KerasSpec:
    """What `KerasRecommender` needs to know about one model family.

    Args:
        name: the `model.name` of the family.
        build_model: `(rec, num_users, num_items, only=None) ->
            keras.Model`; `rec` is the `KerasRecommender` (its configs,
            feature tables, resolved loss and item encoder); `only` names a
            branch for pre-training (NCF's `"gmf"` / `"mlp"`).
        scoring: `"dot"` (the model outputs `user` and `item` vectors and
            scores are one matrix product), `"pairwise"` (the model
            outputs a `logit` per (user, item) pair) or `"vector"` (the
            model maps a user's `(num_items,)` interaction vector,
            `"interactions"`, to `"scores"` over the catalog).
        default_loss: the loss `model.loss="auto"` resolves to.
        uses_history: the user tower reads the user's recent items (and
            user features, and logQ correction in the softmax).
        wants_item_features: `model_cfg -> bool`, whether the item side
            reads `data.item_features`.
        pretrain: optional `(rec, train, epochs) -> keras.Model` run
            instead of a fresh build when `model.pretrain` is set.
        content_items: the item side is the multimodal content encoder
            (needs the content table of `content.items`).
        reads_user_features: the user side reads `data.user_features`.
        batches: optional `(rec, train, labels) -> keras.utils.PyDataset`,
            the family's training batches (default: `InteractionBatches`
            of the interactions).
        user_tables: optional `(rec, interactions) -> {name: (num_users,
            ...) array}`: extra per-user inputs of the user side, made
            with the history (e.g. the ages of the history items); a user
            folded in from items alone gets zeros.
        batch_field: the `train.*` field holding the family's examples
            per step (`batch_size`; SASRec's `positions_per_step`).
    """

    name: str
    build_model: Callable
    scoring: str
    default_loss: str
    uses_history: bool = False
    wants_item_features: Callable = lambda model_cfg: False
    pretrain: Callable | None = None
    content_items: bool = False
    reads_user_features: bool = True
    batches: Callable | None = None
    user_tables: Callable | None = None
    batch_field: str = "batch_size"

    def __post_init__(self):
        if self.scoring not in SCORINGS:
            raise ValueError(
                f"`scoring` must be one of {SCORINGS}. Received: "
                f"{self.scoring!r}"
            )


class KerasRecommender:
    """A Keras model family behind the common Recommender interface.

    Args:
        spec: the family's `KerasSpec`.
        model_cfg: `config.ModelConfig`.
        train_cfg: `config.TrainConfig`.
        item_features: optional `data.FeatureTable` for the item side
            (with `spec.content_items`: the content table of
            `content.items.build_item_features`, whose `stats["layout"]`
            sizes the item encoder).
        user_features: optional `data.FeatureTable` for the user tower.
        ks: cut-offs of the per-epoch validation metrics.
        memory_budget_mb: bounds the user block scored at once.
        seed: int.
        multimodal_cfg: `config.MultimodalConfig` for the content encoder.
        scale_cfg: `config.ScaleConfig`: devices, precision and batch
            workers for `fit` (default: one device, float32, inline).
    """

    def __init__(
        self,
        spec,
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
        self.spec = spec
        self.model_cfg = model_cfg
        self.train_cfg = train_cfg
        self.scale_cfg = scale_cfg or config_lib.ScaleConfig()
        self.multimodal_cfg = multimodal_cfg or config_lib.MultimodalConfig()
        self.item_layout = None
        if spec.content_items:
            if item_features is None or "layout" not in item_features.stats:
                raise ValueError(
                    f"`model.name={model_cfg.name!r}` needs the item content "
                    "table of `content.items.build_item_features`."
                )
            self.item_layout = dict(item_features.stats["layout"])
        wants_items = spec.content_items or spec.wants_item_features(model_cfg)
        if spec.scoring == "pairwise" and wants_items and item_features is None:
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
            if user_features is not None
            and model_cfg.use_user_features
            and spec.reads_user_features
            else None
        )
        self.ks = tuple(ks)
        self.memory_budget_mb = memory_budget_mb
        self.seed = seed
        self.model = None
        self.history_table = None
        self.user_tables = {}
        self.history_rows = None  # "vector" scoring: CSR of the history
        self.best_epoch = None
        self.fit_history = {}
        self._item_cache = None

    @property
    def family(self) -> str:
        """The family name (`two_tower`, `ncf`, `multimodal`, ...)."""
        return self.spec.name

    @property
    def num_users(self) -> int:
        return self.model.num_users

    @property
    def num_items(self) -> int:
        return self.model.num_items

    @property
    def folds_in_history(self) -> bool:
        """A user the model never saw is encoded from their items alone
        (`history_embedding`): the user tower reads the history and no
        user id."""
        mc = self.model_cfg
        return self.spec.uses_history and mc.use_history and not mc.use_user_id

    @property
    def has_vectors(self) -> bool:
        """Scores are dot products of `user_embeddings` and
        `item_embeddings` (retrieval indexes and fold-in can use them)."""
        return self.spec.scoring == "dot"

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

    def refit_params(self):
        """What a refit on more data should reuse: the selected epoch."""
        return {"epochs": self.best_epoch}

    def metadata(self) -> dict:
        """The family, its settings and the selected epoch (JSON-ready)."""
        info = {
            "kind": "keras",
            "family": self.spec.name,
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
        return info

    @property
    def loss(self):
        """The configured loss, with `auto` resolved for the family."""
        loss = self.model_cfg.loss
        return self.spec.default_loss if loss == "auto" else loss

    def score(self, user_idx, item_idx=None):
        """`(len(user_idx), num_items or len(item_idx))` float32 scores:
        cosines for dot-product families (one matrix product), logits for
        pairwise ones (pairs scored in chunks bounded by
        `_PAIR_BUDGET_BYTES`)."""
        user_idx = np.asarray(user_idx, np.int32)
        if self.spec.scoring == "vector":
            return self._score_vectors(user_idx, item_idx)
        if not self.has_vectors:
            return self._score_pairs(user_idx, item_idx)
        items = self.item_embeddings()
        if item_idx is not None:
            items = items[np.asarray(item_idx)]
        users = self.user_embeddings(user_idx)
        return users @ items.T

    def score_pairs(self, user_idx, item_idx):
        """Scores of aligned (user, item) pairs: logits of a pairwise family
        or cosines of a dot-product one, in chunks bounded like `score`."""
        user_idx = np.asarray(user_idx, np.int32)
        item_idx = np.asarray(item_idx, np.int32)
        if self.spec.scoring == "vector":
            out = np.empty(len(user_idx), np.float32)
            for users in np.unique(user_idx):
                rows = user_idx == users
                out[rows] = self._score_vectors([users], item_idx[rows])[0]
            return out
        if self.has_vectors:
            users = self.user_embeddings(user_idx)
            return np.sum(users * self.item_embeddings()[item_idx], axis=1)
        inputs = {"user": user_idx, "item": item_idx}
        inputs.update(self._item_side(item_idx))
        return self._predict(inputs)["logit"]

    def set_history(self, interactions):
        """Use these interactions as every user's history at scoring time."""
        if self.spec.uses_history and self.model_cfg.use_history:
            self.history_table = data.history_matrix(
                interactions, self.model_cfg.history_length
            )
            if self.spec.user_tables is not None:
                self.user_tables = dict(
                    self.spec.user_tables(self, interactions)
                )
        if self.spec.scoring == "vector":
            self.history_rows = interactions.to_csr().astype(np.float32)
        self._item_cache = None

    # --- embeddings -------------------------------------------------------

    def item_embeddings(self):
        """`(num_items, embedding_dim)` float32, cached until weights change."""
        if self._item_cache is None:
            n = self.num_items
            inputs = {"item": np.arange(n, dtype=np.int32)}
            if self.item_features is not None:
                inputs["item_features"] = self.item_features
            self._item_cache = self._predict(inputs)["item"]
        return self._item_cache

    def user_embeddings(self, user_idx):
        inputs = {"user": np.asarray(user_idx, np.int32)}
        if self.history_table is not None:
            inputs["history"] = self.history_table[user_idx]
        for name, table in self.user_tables.items():
            inputs[name] = table[user_idx]
        if self.user_features is not None:
            inputs["user_features"] = self.user_features[user_idx]
        return self._predict(inputs)["user"]

    def history_embedding(self, item_idx):
        """The user vector of someone whose history is `item_idx` (oldest
        first), computed like a known user's: the fold-in of a user the
        model never saw (needs a history-reading user tower)."""
        length = self.model_cfg.history_length
        recent = np.asarray(item_idx)[::-1][:length]  # newest first
        history = np.zeros((1, length), np.int32)
        history[0, : len(recent)] = recent + 1  # 0 is padding
        inputs = {"user": np.zeros(1, np.int32), "history": history}
        for name, table in self.user_tables.items():
            inputs[name] = np.zeros((1,) + table.shape[1:], table.dtype)
        if self.user_features is not None:
            # No features are known for a new user: an all-zero row.
            inputs["user_features"] = np.zeros(
                (1, self.user_features.shape[1]), np.float32
            )
        out = self.model.predict_on_batch(inputs)
        return np.asarray(out["user"][0], np.float32)

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
        for name, table in self.user_tables.items():
            tables[_USER_TABLE + name] = table
        if self.history_rows is not None:
            rows = self.history_rows.tocsr()
            tables[_HISTORY_ROWS + "indptr"] = rows.indptr
            tables[_HISTORY_ROWS + "indices"] = rows.indices
            tables[_HISTORY_ROWS + "shape"] = np.asarray(rows.shape)
        np.savez(path / "tables.npz", **tables)
        runs.write_json(path / "recommender.json", self.metadata(), None)

    @classmethod
    def load(cls, path, spec):
        """Load a saved recommender of the family `spec` on any backend.
        The model is loaded with `compile=False`: an optimizer saved under
        torch cannot be restored on JAX/TF, and prediction needs none
        (fit() compiles afresh)."""
        path = pathlib.Path(path)
        with runs.reading(path / "recommender.json"):
            info = json.loads((path / "recommender.json").read_text())
        with (
            runs.reading(path / "tables.npz"),
            np.load(path / "tables.npz") as npz,
        ):
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
            spec,
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
        with runs.reading(path / "model.keras"):
            rec.model = keras.saving.load_model(
                path / "model.keras", compile=False
            )
        for name, table in tables.items():
            if name.startswith(_USER_TABLE):
                rec.user_tables[name[len(_USER_TABLE) :]] = table
            elif not name.startswith(_HISTORY_ROWS):
                setattr(rec, name, table)
        if _HISTORY_ROWS + "indptr" in tables:
            indices = tables[_HISTORY_ROWS + "indices"]
            rec.history_rows = sp.csr_matrix(
                (
                    np.ones(len(indices), np.float32),
                    indices,
                    tables[_HISTORY_ROWS + "indptr"],
                ),
                shape=tuple(tables[_HISTORY_ROWS + "shape"]),
            )
        rec.best_epoch = info["best_epoch"]
        return rec

    # --- training ----------------------------------------------------------

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
        if not reuse and self.spec.pretrain is not None and mc.pretrain:
            self.model = self.spec.pretrain(self, train, epochs or tc.epochs)
        elif not reuse:
            self.model = self.build_model(train.num_users, train.num_items)
        self._compile(self.model)
        loss = self.loss
        if loss == "mse":
            labels = data.scaled_labels(train.value)
        elif loss == "bce":
            labels = data.graded_labels(
                train.value, mc.like_threshold, mc.dislike_threshold
            )
        else:
            labels = None
        make_batches = self.spec.batches or interaction_batches
        batches = distribution_lib.shard_for_process(
            make_batches(self, train, labels)
        )
        epochs = epochs or tc.epochs
        with runs.checkpoint_dir() as temp:
            callbacks, checkpoint = self._selection_callbacks(
                train, valid, checkpoint_dir or temp
            )
            stage = "select" if callbacks else "fit"
            callbacks += tracking.epoch_callbacks(f"{mc.name}/{stage}")
            logger.info(
                "fitting %s: users=%d items=%d interactions=%d epochs<=%d "
                "batch=%d steps/epoch=%d",
                mc.name,
                train.num_users,
                train.num_items,
                len(train),
                epochs,
                getattr(tc, self.spec.batch_field),
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
                self.best_epoch = (
                    len(self.fit_history.get("loss", [])) or epochs
                )
        self._item_cache = None
        return self.fit_history

    def _selection_callbacks(self, train, valid, folder):
        """The callbacks that select the epoch on `valid` (none without
        it) and the checkpoint file the best weights go to."""
        if valid is None or not len(valid):
            return [], None
        tc = self.train_cfg
        monitor = "val_" + tc.monitor
        checkpoint = pathlib.Path(folder) / "best.weights.h5"
        callbacks = [
            RankingMonitor(
                self, train, valid, self.ks, tc.monitor, self.memory_budget_mb
            ),
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
        return callbacks, checkpoint

    def build_model(self, num_users, num_items, only=None):
        """A fresh network of this family (see `KerasSpec.build_model`)."""
        return self.spec.build_model(self, num_users, num_items, only=only)

    def item_encoder(self):
        """The multimodal item encoder sized by the content layout, or
        None when the item side is not the content encoder."""
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
        # torch.compile on CPU costs more than it saves for models this
        # small, and is not what `jit_compile` means to Keras users.
        jit = tc.jit_compile and keras.backend.backend() != "torch"
        model.compile(optimizer=optimizers[tc.optimizer](), jit_compile=jit)

    # --- scoring helpers ----------------------------------------------------

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

    def _score_vectors(self, user_idx, item_idx=None):
        if self.history_rows is None:
            raise ValueError(
                "Scoring needs the users' interactions: call `set_history` "
                "(fit does) first."
            )
        n = self.history_rows.shape[1]
        users_per_chunk = max(1, _VECTOR_BUDGET_BYTES // (8 * n))
        out = np.empty(
            (len(user_idx), n if item_idx is None else len(item_idx)),
            np.float32,
        )
        for start in range(0, len(user_idx), users_per_chunk):
            chunk = user_idx[start : start + users_per_chunk]
            rows = self.history_rows[chunk].toarray()
            scores = self._predict({"interactions": rows})["scores"]
            if item_idx is not None:
                scores = scores[:, np.asarray(item_idx)]
            out[start : start + len(chunk)] = scores
        return out

    def _item_side(self, item_idx):
        """A pairwise family's item inputs for `item_idx`: the item
        features, or, with an item encoder (multimodal), its output
        computed once per item and cached like the item embeddings."""
        if self.item_features is None:
            return {}
        if getattr(self.model, "item_encoder", None) is None:
            return {"item_features": self.item_features[item_idx]}
        if self._item_cache is None:
            self._item_cache = self._predict(
                {"item_features": self.item_features}
            )["item_vector"]
        return {"item_vector": self._item_cache[item_idx]}

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
                k: np.concatenate([v, np.repeat(v[-1:], padded - rows, axis=0)])
                for k, v in inputs.items()
            }
        out = self.model.predict(inputs, batch_size=batch, verbose=0)
        # Mixed-precision models return bfloat16/float16; score in float32.
        return {k: v[:rows].astype(np.float32) for k, v in out.items()}


def interaction_batches(rec, train, labels):
    """The default `KerasSpec.batches`: shuffled (user, item) batches with
    what the family reads (history, features, negatives, logQ)."""
    mc, tc = rec.model_cfg, rec.train_cfg
    counts = train.item_counts()
    history_user = rec.spec.uses_history
    return data.InteractionBatches(
        train,
        tc.batch_size,
        seed=rec.seed,
        history=rec.history_table if history_user else None,
        history_dropout=tc.history_dropout,
        user_features=rec.user_features if history_user else None,
        item_features=rec.item_features,
        num_negatives=tc.num_negatives if rec.loss in ("bpr", "bce") else 0,
        sampler=data.negative_sampler(
            counts, tc.negative_sampling, tc.popularity_alpha
        ),
        item_logq=data.item_log_probs(counts)
        if history_user and mc.use_logq
        else None,
        labels=labels,
        workers=rec.scale_cfg.workers,
        use_multiprocessing=rec.scale_cfg.use_multiprocessing,
    )


def vector_batches(rec, train, labels):
    """`KerasSpec.batches` of the `"vector"` families: shuffled rows of
    the user-item matrix (`data.InteractionRows`)."""
    del labels  # the rows are the targets
    return data.InteractionRows(
        train,
        rec.train_cfg.batch_size,
        seed=rec.seed,
        workers=rec.scale_cfg.workers,
        use_multiprocessing=rec.scale_cfg.use_multiprocessing,
    )


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
