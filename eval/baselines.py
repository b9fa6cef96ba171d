"""Non-neural baselines behind the project's one `Recommender` interface.

A neural model has only earned its cost when it beats these on the same
split (BENCHMARK.md), so they are implemented carefully and cheaply:
`Random`, `MostPopular`, `ItemKNN`, `UserKNN`, `EASE`, and `ALS` / `BPR`
through the `implicit` library. Each one follows the interface

```
fit(train, valid=None) -> dict        # info: fit time, sizes, ...
score(user_idx, item_idx=None)        # (len(user_idx), num_items) float32
save(path) / Baseline.load(path)      # a folder: config.json + arrays.npz
get_config()                          # the constructor hyper-parameters
```

`score()` ranks with the history given to `fit` (the binary train matrix)
and only ever materialises the requested users' rows, so memory is bounded
by the caller's user block. `make_baseline(name, **params)` builds one from
the `BASELINES` registry.
"""

import inspect
import json
import logging
import os
import pathlib
import time

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import threadpoolctl

from runtime import runs

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
ARRAYS_FILE = "arrays.npz"
# Upper bound on the floats of one dense (items, block) similarity slab.
_BLOCK_FLOATS = 1 << 24


class Baseline:
    """Shared plumbing: history matrix, validation, timing, save / load.

    Subclasses implement `_fit(x)` on the binary `(num_users, num_items)`
    CSR train matrix `x`, `_score(user_idx)` returning dense float32 rows,
    and `_state()` / `_set_state(arrays)` for the arrays that `save` keeps.
    """

    # Interaction weights (count data) reach `_fit` instead of ones.
    uses_weights = False
    # Set by the caller (`eval.memory_warning_gb`): warn before a fit whose
    # `memory_bytes` estimate is larger.
    memory_warning_bytes = None

    def __init__(self):
        self._history = None

    @classmethod
    def memory_bytes(cls, num_users, num_items, nnz) -> int:
        """Estimated peak bytes of `fit` and scoring beyond the data
        itself; models whose memory grows with items squared override it."""
        return 4 * (num_users + num_items) + 12 * nnz

    @property
    def num_users(self) -> int:
        self._check_fitted()
        return self._history.shape[0]

    @property
    def num_items(self) -> int:
        self._check_fitted()
        return self._history.shape[1]

    def get_config(self) -> dict:
        return {}

    def refit_params(self) -> dict:
        """Nothing is selected on valid, so a refit reuses nothing."""
        return {}

    def metadata(self) -> dict:
        """The class and its hyper-parameters (JSON-ready)."""
        return {
            "kind": "baseline",
            "class_name": type(self).__name__,
            "config": self.get_config(),
        }

    def fit(self, train, valid=None) -> dict:
        """Fit on `train` (an `Interactions`); `valid` is ignored.

        Returns:
            dict with `fit_seconds`, `num_users`, `num_items`, `num_train`.
        """
        del valid  # Baselines have no epochs to select.
        start = time.perf_counter()
        self._history = train.to_csr(binary=True)
        estimate = self.memory_bytes(
            train.num_users, train.num_items, self._history.nnz
        )
        if self.memory_warning_bytes and estimate > self.memory_warning_bytes:
            logger.warning(
                "%s on users=%d items=%d needs about %.1f GiB, above the "
                "%.1f GiB of `eval.memory_warning_gb`",
                type(self).__name__,
                train.num_users,
                train.num_items,
                estimate / 2**30,
                self.memory_warning_bytes / 2**30,
            )
        weighted = self.uses_weights and train.weighted
        self._fit(train.to_csr(weighted=True) if weighted else self._history)
        seconds = time.perf_counter() - start
        logger.info(
            "%s fit users=%d items=%d nnz=%d in %.2fs",
            type(self).__name__,
            train.num_users,
            train.num_items,
            self._history.nnz,
            seconds,
        )
        return {
            "fit_seconds": seconds,
            "num_users": int(train.num_users),
            "num_items": int(train.num_items),
            "num_train": int(self._history.nnz),
        }

    def score(self, user_idx, item_idx=None) -> np.ndarray:
        """Scores of `user_idx` for every item (or the `item_idx` columns).

        Args:
            user_idx: `(b,)` int user indices.
            item_idx: optional `(m,)` int item indices.

        Returns:
            `(b, num_items)` or `(b, m)` float32, higher = better.
        """
        self._check_fitted()
        user_idx = _as_index(user_idx, self.num_users, "user_idx")
        scores = self._score(user_idx)
        if item_idx is not None:
            item_idx = _as_index(item_idx, self.num_items, "item_idx")
            scores = scores[:, item_idx]
        return np.ascontiguousarray(scores, dtype=np.float32)

    def save(self, path) -> None:
        """Write `config.json` and `arrays.npz` into the folder `path`."""
        self._check_fitted()
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = {
            "history_indptr": self._history.indptr,
            "history_indices": self._history.indices,
            "history_shape": np.asarray(self._history.shape, np.int64),
        }
        arrays.update(self._state())
        tmp = path / (ARRAYS_FILE + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path / ARRAYS_FILE)
        meta = {"class_name": type(self).__name__, "config": self.get_config()}
        tmp = path / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, path / CONFIG_FILE)

    @classmethod
    def load(cls, path) -> "Baseline":
        """Rebuild a fitted baseline saved by `save`.

        Called on `Baseline` it dispatches on the saved class name; called
        on a subclass it checks that the folder holds that class.
        """
        path = pathlib.Path(path)
        with runs.reading(path / CONFIG_FILE):
            meta = json.loads((path / CONFIG_FILE).read_text())
        name = meta["class_name"]
        by_name = {c.__name__: c for c in BASELINES.values()}
        if name not in by_name:
            raise ValueError(
                f"`path` holds an unknown baseline class. Received: {name!r} "
                f"in {path / CONFIG_FILE}."
            )
        target = by_name[name]
        if cls is not Baseline and cls is not target:
            raise ValueError(
                f"`path` holds a {name}, not a {cls.__name__}. "
                f"Received: {path}."
            )
        model = target(**meta["config"])
        with (
            runs.reading(path / ARRAYS_FILE),
            np.load(path / ARRAYS_FILE) as npz,
        ):
            arrays = {key: npz[key] for key in npz.files}
        shape = tuple(int(s) for s in arrays.pop("history_shape"))
        indptr = arrays.pop("history_indptr")
        indices = arrays.pop("history_indices")
        data = np.ones(len(indices), np.float32)
        model._history = sp.csr_matrix((data, indices, indptr), shape=shape)
        model._set_state(arrays)
        return model

    def _fit(self, x: sp.csr_matrix) -> None:
        raise NotImplementedError

    def _score(self, user_idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> dict:
        return {}

    def _set_state(self, arrays: dict) -> None:
        del arrays

    def _check_fitted(self) -> None:
        if self._history is None:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted: call `fit()` first."
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Random(Baseline):
    """Uniform random scores, the floor every model must clear.

    Each user's scores come from a generator seeded by `(seed, user)`, so a
    user gets the same ranking whatever block it is scored in.

    Args:
        seed: int, base seed. Defaults to `0`.
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = int(seed)

    def get_config(self) -> dict:
        return {"seed": self.seed}

    def _fit(self, x):
        pass

    def _score(self, user_idx):
        out = np.empty((len(user_idx), self.num_items), np.float32)
        for row, user in enumerate(user_idx):
            rng = np.random.default_rng((self.seed, int(user)))
            out[row] = rng.random(self.num_items, dtype=np.float32)
        return out


class MostPopular(Baseline):
    """Score = number of train users who interacted with the item.

    The same ranking for everyone; already-seen items are masked by the
    evaluator, not here.
    """

    def _fit(self, x):
        self._counts = np.asarray(x.sum(axis=0)).ravel().astype(np.float32)

    def _score(self, user_idx):
        return np.broadcast_to(
            self._counts, (len(user_idx), self.num_items)
        ).copy()

    def _state(self):
        return {"counts": self._counts}

    def _set_state(self, arrays):
        self._counts = arrays["counts"]


class ItemKNN(Baseline):
    """Item-based nearest neighbours with cosine similarity.

    `sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i|) sqrt(|U_j|) + shrink)` on the
    binary train matrix, self-similarity removed; each target item `j`
    keeps only its `k` most similar items, and a user's score for `j` is
    the sum of the similarities of `j`'s neighbours in their history.

    Args:
        k: int, neighbours kept per item. Defaults to `100`.
        shrink: float >= 0, added to the cosine denominator to damp
            similarities built on few co-occurrences. Defaults to `0.0`.

    References:
        - Sarwar, Karypis, Konstan, Riedl. "Item-based collaborative
          filtering recommendation algorithms." WWW 2001.
    """

    def __init__(self, k: int = 100, shrink: float = 0.0):
        super().__init__()
        _check_positive_int(k, "k")
        _check_non_negative(shrink, "shrink")
        self.k = int(k)
        self.shrink = float(shrink)

    def get_config(self) -> dict:
        return {"k": self.k, "shrink": self.shrink}

    def _fit(self, x):
        xt = x.T.tocsr()  # (items, users)
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        self._weights = _top_k_similarity(
            xt, xt, norms, norms, self.k, self.shrink, exclude_self=True
        )

    def _score(self, user_idx):
        return (self._history[user_idx] @ self._weights).toarray()

    def _state(self):
        return _csr_state("weights", self._weights)

    def _set_state(self, arrays):
        self._weights = _csr_from_state("weights", arrays)


class UserKNN(Baseline):
    """User-based nearest neighbours with cosine similarity.

    A user's score for item `j` is the summed cosine similarity of their
    `k` most similar train users (themselves excluded) who have `j`.
    Similarities are computed per requested block of users at score time.

    Args:
        k: int, neighbours kept per user. Defaults to `100`.
        shrink: float >= 0, added to the cosine denominator. Defaults to
            `0.0`.

    References:
        - Herlocker, Konstan, Borchers, Riedl. "An algorithmic framework for
          performing collaborative filtering." SIGIR 1999.
    """

    def __init__(self, k: int = 100, shrink: float = 0.0):
        super().__init__()
        _check_positive_int(k, "k")
        _check_non_negative(shrink, "shrink")
        self.k = int(k)
        self.shrink = float(shrink)

    def get_config(self) -> dict:
        return {"k": self.k, "shrink": self.shrink}

    def _fit(self, x):
        self._norms = np.sqrt(np.asarray(x.sum(axis=1)).ravel())

    def _score(self, user_idx):
        x = self._history
        sim = _top_k_similarity(
            x,
            x[user_idx],
            self._norms,
            self._norms[user_idx],
            self.k,
            self.shrink,
            exclude_self=False,
            self_index=user_idx,
        )  # (num_users, len(user_idx))
        return (sim.T.tocsr() @ x).toarray()

    def _state(self):
        return {"norms": self._norms}

    def _set_state(self, arrays):
        self._norms = arrays["norms"]


class EASE(Baseline):
    """Embarrassingly Shallow Autoencoder: a closed-form item-item model.

    `B = I - P diagMat(1 / diag(P))` with `P = (X^T X + lambda I)^-1`, so
    that `diag(B) = 0`; the score of a user is `x_u B`. The inverse is
    taken in float64 (by Cholesky) over the items seen in train only:
    an unseen item's row and column of `B` are exactly zero, so leaving it
    out changes nothing and saves cubic time. With fewer (active) users
    than items, `X^T X` has rank at most the number of users and the
    Woodbury identity `P = (I - X^T (lambda I + X X^T)^-1 X) / lambda`
    inverts a users x users matrix instead (exact; 610 x 610 instead of
    about 8,000 x 8,000 on ml-latest-small). Weights are kept in float32.
    With count data (`data.weight_col`) `X` holds the interaction weights.

    Its memory grows with items squared (`memory_bytes`): about 10 GiB at
    30,000 items in float32, 17 GiB in float64.

    Args:
        l2: float > 0, the L2 penalty `lambda`. Defaults to `500.0`.
        dtype: `"float32"` (default) or `"float64"` for the Gram matrix and
            its inverse. float32 needs about 40% less memory and gives the
            same metrics to five decimals on P1 and P2.

    References:
        - Steck. "Embarrassingly Shallow Autoencoders for Sparse Data."
          WWW 2019.
    """

    uses_weights = True

    def __init__(self, l2: float = 500.0, dtype: str = "float32"):
        super().__init__()
        if not float(l2) > 0:
            raise ValueError(f"`l2` must be > 0. Received: l2={l2}")
        if dtype not in ("float32", "float64"):
            raise ValueError(
                f"`dtype` must be 'float32' or 'float64'. Received: {dtype!r}"
            )
        self.l2 = float(l2)
        self.dtype = dtype

    def get_config(self) -> dict:
        return {"l2": self.l2, "dtype": self.dtype}

    @classmethod
    def memory_bytes(cls, num_users, num_items, nnz, dtype="float32"):
        """The item-item Gram matrix and its inverse in `dtype` and the
        float32 weights (plus the Woodbury path's users x items copies when
        users are fewer than items)."""
        size = np.dtype(dtype).itemsize
        total = num_items**2 * (2 * size + 4) + 12 * nnz
        if num_users < num_items:
            total += 2 * num_users * num_items * size + num_users**2 * size
        return int(total)

    def _fit(self, x):
        seen = np.flatnonzero(np.diff(x.tocsc().indptr))
        active = np.flatnonzero(np.diff(x.indptr))
        xs = x[active][:, seen]
        if len(active) < len(seen):
            dense = xs.toarray().astype(self.dtype)  # (users, items)
            kernel = dense @ dense.T
            kernel[np.diag_indices_from(kernel)] += self.l2
            inverse = -(dense.T @ (_spd_inverse(kernel) @ dense))
            inverse[np.diag_indices_from(inverse)] += 1.0
            inverse /= self.l2
        else:
            inverse = (xs.T @ xs).toarray().astype(self.dtype)
            inverse[np.diag_indices_from(inverse)] += self.l2
            inverse = _spd_inverse(inverse)
        weights = inverse / -np.diag(inverse)
        weights[np.diag_indices_from(weights)] = 0.0
        self._seen = seen.astype(np.int32)
        self._weights = weights.astype(np.float32)

    def _score(self, user_idx):
        rows = self._history[user_idx][:, self._seen]
        out = np.zeros((len(user_idx), self.num_items), np.float32)
        out[:, self._seen] = rows @ self._weights
        return out

    def _state(self):
        return {"seen": self._seen, "weights": self._weights}

    def _set_state(self, arrays):
        self._seen = arrays["seen"]
        self._weights = arrays["weights"]


class _MatrixFactorization(Baseline):
    """Scores are dot products of learned user and item factors, so the
    vectors serve retrieval indexes (`has_vectors`)."""

    has_vectors = True

    def __init__(
        self,
        factors,
        regularization,
        iterations,
        seed,
        num_threads,
        show_progress,
    ):
        super().__init__()
        _check_positive_int(factors, "factors")
        _check_positive_int(iterations, "iterations")
        _check_non_negative(regularization, "regularization")
        self.factors = int(factors)
        self.regularization = float(regularization)
        self.iterations = int(iterations)
        self.seed = int(seed)
        self.num_threads = int(num_threads)
        self.show_progress = bool(show_progress)

    def user_embeddings(self, user_idx) -> np.ndarray:
        """`(len(user_idx), factors)`: the users' factors."""
        return self.user_factors[np.asarray(user_idx)]

    def item_embeddings(self) -> np.ndarray:
        """`(num_items, factors)`: the item factors."""
        return self.item_factors

    @property
    def user_factors(self) -> np.ndarray:
        """`(num_users, factors)` float32; scores are `user @ item.T`."""
        self._check_fitted()
        return self._user_factors

    @property
    def item_factors(self) -> np.ndarray:
        """`(num_items, factors)` float32."""
        self._check_fitted()
        return self._item_factors

    def get_config(self) -> dict:
        return {name: getattr(self, name) for name in self._PARAMS}

    def _fit(self, x):
        implicit_module = _import_implicit(self._MODULE)
        with threadpoolctl.threadpool_limits(1, "blas"):
            model = self._implicit_model(implicit_module)
            model.fit(x, show_progress=self.show_progress)
        self._user_factors = np.asarray(model.user_factors, np.float32)
        self._item_factors = np.asarray(model.item_factors, np.float32)

    def _implicit_model(self, implicit_module):
        """The unfitted `implicit` model with this instance's settings."""
        raise NotImplementedError

    def _score(self, user_idx):
        return self._user_factors[user_idx] @ self._item_factors.T

    def _state(self):
        return {
            "user_factors": self._user_factors,
            "item_factors": self._item_factors,
        }

    def _set_state(self, arrays):
        self._user_factors = arrays["user_factors"]
        self._item_factors = arrays["item_factors"]


class ALS(_MatrixFactorization):
    """Implicit-feedback matrix factorisation by alternating least squares.

    Uses `implicit.cpu.als.AlternatingLeastSquares` on the binary train
    matrix scaled by `alpha` (positive confidence `alpha`, negatives 1).
    Scores are dot products of the learned user and item factors.

    Args:
        factors: int, latent dimension. Defaults to `64`.
        regularization: float, L2 penalty. Defaults to `0.01`.
        iterations: int, ALS sweeps. Defaults to `15`.
        alpha: float > 0, confidence of an observed interaction.
            Defaults to `1.0` (the `implicit` default).
        seed: int, seeds the factor initialisation. Defaults to `0`.
        num_threads: int, fitting threads, `0` = all cores. Defaults to `0`.
        show_progress: bool, show `implicit`'s progress bar. Defaults to
            `False`.

    References:
        - Hu, Koren, Volinsky. "Collaborative Filtering for Implicit
          Feedback Datasets." ICDM 2008.
    """

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.01,
        iterations: int = 15,
        alpha: float = 1.0,
        seed: int = 0,
        num_threads: int = 0,
        show_progress: bool = False,
    ):
        super().__init__(
            factors,
            regularization,
            iterations,
            seed,
            num_threads,
            show_progress,
        )
        if not float(alpha) > 0:
            raise ValueError(f"`alpha` must be > 0. Received: alpha={alpha}")
        self.alpha = float(alpha)

    _MODULE = "als"
    uses_weights = True  # confidence alpha * weight (Hu et al. 2008)
    _PARAMS = (
        "factors",
        "regularization",
        "iterations",
        "alpha",
        "seed",
        "num_threads",
        "show_progress",
    )

    def _implicit_model(self, implicit_module):
        return implicit_module.AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            num_threads=self.num_threads,
            random_state=self.seed,
        )

    def fold_in(self, item_idx) -> np.ndarray:
        """The user factor of a user absent from training, from the items
        they interacted with: one exact ALS user step with the item factors
        fixed (Hu et al. 2008, eq. 4; `implicit`'s `recalculate_user`),

        `x = (Y^T Y + (alpha - 1) Y_p^T Y_p + regularization I)^-1
        alpha Y_p^T 1`, where `Y_p` holds the factors of the given items.

        Args:
            item_idx: `(n,)` int item indices (duplicates count once).

        Returns:
            `(factors,)` float32; score items with `item_factors @ x`.
        """
        self._check_fitted()
        items = np.unique(_as_index(item_idx, self.num_items, "item_idx"))
        y = self._item_factors.astype(np.float64)
        picked = y[items]
        a = y.T @ y + (self.alpha - 1.0) * (picked.T @ picked)
        a[np.diag_indices_from(a)] += self.regularization
        b = self.alpha * picked.sum(axis=0)
        return np.linalg.solve(a, b).astype(np.float32)


class BPR(_MatrixFactorization):
    """Matrix factorisation trained with the BPR pairwise ranking loss.

    Uses `implicit.cpu.bpr.BayesianPersonalizedRanking` (SGD over sampled
    (user, positive, negative) triples; an item bias is learned as an
    extra factor). With `num_threads != 1` the Hogwild updates make runs
    differ slightly even with the same seed; `num_threads=1` is exactly
    reproducible.

    Args:
        factors: int, latent dimension. Defaults to `64`.
        learning_rate: float > 0, SGD step. Defaults to `0.01`.
        regularization: float, L2 penalty. Defaults to `0.01`.
        iterations: int, epochs. Defaults to `100`.
        seed: int, seeds initialisation and sampling. Defaults to `0`.
        num_threads: int, fitting threads, `0` = all cores. Defaults to `0`.
        show_progress: bool, show `implicit`'s progress bar. Defaults to
            `False`.

    References:
        - Rendle, Freudenthaler, Gantner, Schmidt-Thieme. "BPR: Bayesian
          Personalized Ranking from Implicit Feedback." UAI 2009.
    """

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.01,
        regularization: float = 0.01,
        iterations: int = 100,
        seed: int = 0,
        num_threads: int = 0,
        show_progress: bool = False,
    ):
        super().__init__(
            factors,
            regularization,
            iterations,
            seed,
            num_threads,
            show_progress,
        )
        if not float(learning_rate) > 0:
            raise ValueError(
                "`learning_rate` must be > 0. Received: "
                f"learning_rate={learning_rate}"
            )
        self.learning_rate = float(learning_rate)

    _MODULE = "bpr"
    _PARAMS = (
        "factors",
        "learning_rate",
        "regularization",
        "iterations",
        "seed",
        "num_threads",
        "show_progress",
    )

    def _implicit_model(self, implicit_module):
        return implicit_module.BayesianPersonalizedRanking(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            num_threads=self.num_threads,
            random_state=self.seed,
        )


class ContentProfile(Baseline):
    """Content-based scores: cosine between an item's feature vector and
    the user's profile, the mean of the (L2-normalised) feature vectors of
    the items in the user's history.

    It needs no interactions for the items it scores, so it is the simple
    bar for cold-start items (items with no training interactions).

    Args:
        item_features: `(num_items, F)` float array of item features.
    """

    def __init__(self, item_features):
        super().__init__()
        features = np.asarray(item_features, np.float32)
        if features.ndim != 2 or not len(features):
            raise ValueError(
                "`item_features` must be a non-empty (num_items, F) array. "
                f"Received shape: {features.shape}"
            )
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        self.item_features = features / np.maximum(norms, 1e-12)

    def _fit(self, x):
        if x.shape[1] != len(self.item_features):
            raise ValueError(
                f"`item_features` has {len(self.item_features)} rows but the "
                f"data has {x.shape[1]} items."
            )

    def _score(self, user_idx):
        profiles = self._history[user_idx] @ self.item_features
        norms = np.linalg.norm(profiles, axis=1, keepdims=True)
        profiles = profiles / np.maximum(norms, 1e-12)
        return profiles @ self.item_features.T


class ContentKNN(Baseline):
    """Item-based nearest neighbours on content vectors (content ItemKNN).

    `sim(i, j)` is the cosine of the items' content vectors (text, image or
    numeric embeddings). Each target item `j` keeps its `k` most similar
    items among those with training interactions (only they can be in a
    history), and a user's score for `j` is the sum of the similarities of
    `j`'s neighbours in their history, as in `ItemKNN`. It needs no
    interactions for `j`, so it ranks cold-start items.

    Args:
        item_features: `(num_items, F)` float array of content vectors.
        k: int, neighbours kept per item. Defaults to `50`.
    """

    def __init__(self, item_features, k: int = 50):
        super().__init__()
        _check_positive_int(k, "k")
        features = np.asarray(item_features, np.float32)
        if features.ndim != 2 or not len(features):
            raise ValueError(
                "`item_features` must be a non-empty (num_items, F) array. "
                f"Received shape: {features.shape}"
            )
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        self.item_features = features / np.maximum(norms, 1e-12)
        self.k = int(k)

    def get_config(self) -> dict:
        return {"k": self.k}

    def _fit(self, x):
        n = len(self.item_features)
        if x.shape[1] != n:
            raise ValueError(
                f"`item_features` has {n} rows but the data has "
                f"{x.shape[1]} items."
            )
        sources = np.flatnonzero(np.asarray(x.sum(axis=0)).ravel() > 0)
        kk = min(self.k, len(sources))
        block = max(1, _BLOCK_FLOATS // max(len(sources), 1))
        rows, cols, vals = [], [], []
        for start in range(0, n, block):
            targets = np.arange(start, min(start + block, n))
            sim = self.item_features[sources] @ self.item_features[targets].T
            sim[sources[:, None] == targets[None, :]] = 0.0  # no self pair
            top = np.argpartition(-sim, kk - 1, axis=0)[:kk]  # (kk, block)
            values = np.take_along_axis(sim, top, axis=0)
            keep = values > 0
            rows.append(sources[top][keep])
            cols.append(np.broadcast_to(targets, top.shape)[keep])
            vals.append(values[keep])
        self._weights = sp.csr_matrix(
            (
                np.concatenate(vals),
                (np.concatenate(rows), np.concatenate(cols)),
            ),
            shape=(n, n),
            dtype=np.float32,
        )

    def _score(self, user_idx):
        return (self._history[user_idx] @ self._weights).toarray()

    def _state(self):
        return _csr_state("weights", self._weights)

    def _set_state(self, arrays):
        self._weights = _csr_from_state("weights", arrays)


BASELINES = {
    "random": Random,
    "most_popular": MostPopular,
    "itemknn": ItemKNN,
    "userknn": UserKNN,
    "ease": EASE,
    "als": ALS,
    "bpr": BPR,
}


def make_baseline(name: str, **params) -> Baseline:
    """Build the baseline registered as `name` with `params`.

    Raises:
        ValueError: for a name not in `BASELINES`.
    """
    if name not in BASELINES:
        raise ValueError(
            f"`name` must be one of {sorted(BASELINES)}. Received: {name!r}"
        )
    cls = BASELINES[name]
    accepted = [
        p for p in inspect.signature(cls.__init__).parameters if p != "self"
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"Baseline {name!r} takes the parameters {accepted}. "
            f"Received unknown: {unknown}"
        )
    return cls(**params)


def _top_k_similarity(
    rows,
    cols,
    row_norms,
    col_norms,
    k,
    shrink,
    exclude_self,
    self_index=None,
):
    """Cosine similarities of every `rows` vector to each `cols` vector,
    keeping the `k` largest positive ones per column.

    `rows` is `(n, d)` CSR and `cols` `(m, d)` CSR; returns `(n, m)` CSR.
    The self pair is dropped: on the diagonal when `exclude_self` (rows and
    cols are the same set), or at `(self_index[c], c)` when given.
    """
    n, m = rows.shape[0], cols.shape[0]
    block = max(1, min(m, _BLOCK_FLOATS // max(n, 1)))
    data, indices, counts = [], [], []
    for start in range(0, m, block):
        stop = min(start + block, m)
        sim = (rows @ cols[start:stop].T).toarray()  # (n, block)
        denom = row_norms[:, None] * col_norms[None, start:stop] + shrink
        # A zero denominator means an empty vector: its numerator is 0 too.
        np.divide(sim, denom, out=sim, where=denom > 0)
        local = np.arange(stop - start)
        if exclude_self:
            sim[start + local, local] = 0.0
        if self_index is not None:
            sim[self_index[start:stop], local] = 0.0
        kk = min(k, n)
        if kk < n:
            top = np.argpartition(-sim, kk - 1, axis=0)[:kk]
        else:
            top = np.broadcast_to(np.arange(n)[:, None], (n, stop - start))
        top = np.sort(top, axis=0)
        values = np.take_along_axis(sim, top, axis=0)  # (kk, block)
        # Transposed, boolean indexing walks column by column.
        keep = values.T > 0
        indices.append(top.T[keep])
        data.append(values.T[keep])
        counts.append(keep.sum(axis=1))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))])
    out = sp.csc_matrix(
        (
            np.concatenate(data).astype(np.float32),
            np.concatenate(indices).astype(np.int32),
            indptr.astype(np.int64),
        ),
        shape=(n, m),
    )
    return out.tocsr()


def _spd_inverse(matrix):
    """Inverse of a symmetric positive definite float32 or float64 matrix
    (Cholesky: about twice as fast as a general LU inverse)."""
    potrf, potri = scipy.linalg.lapack.get_lapack_funcs(
        ("potrf", "potri"), (matrix,)
    )
    factor, info = potrf(matrix, lower=False, overwrite_a=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"Cholesky failed (info={info}).")
    inverse, info = potri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"Cholesky inverse failed (info={info}).")
    upper = np.triu(inverse)
    return upper + np.triu(upper, 1).T


def _csr_state(name, matrix):
    return {
        f"{name}_data": matrix.data,
        f"{name}_indices": matrix.indices,
        f"{name}_indptr": matrix.indptr,
        f"{name}_shape": np.asarray(matrix.shape, np.int64),
    }


def _csr_from_state(name, arrays):
    shape = tuple(int(s) for s in arrays[f"{name}_shape"])
    return sp.csr_matrix(
        (
            arrays[f"{name}_data"],
            arrays[f"{name}_indices"],
            arrays[f"{name}_indptr"],
        ),
        shape=shape,
    )


def _import_implicit(module):
    # `implicit` warns, and runs far slower, when OpenBLAS uses a thread
    # pool. The variable only acts if OpenBLAS is not loaded yet; numpy and
    # scipy usually have loaded it, so the fits also run inside
    # `threadpoolctl.threadpool_limits(1, "blas")`.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:  # `implicit` only for ALS / BPR (it is a compiled extension)
        if module == "als":
            import implicit.cpu.als as implicit_module
        else:  # the BPR half of the same extension
            import implicit.cpu.bpr as implicit_module
    except ImportError as e:
        raise ImportError(
            "ALS and BPR need the `implicit` package: pip install "
            "'implicit>=0.7'"
        ) from e
    return implicit_module


def _as_index(values, size, name):
    values = np.asarray(values)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(
            f"`{name}` must be a 1-D integer array. Received: dtype="
            f"{values.dtype}, shape={values.shape}"
        )
    if len(values) and (values.min() < 0 or values.max() >= size):
        raise ValueError(
            f"`{name}` must lie in [0, {size}). Received: range "
            f"[{values.min()}, {values.max()}]"
        )
    return values.astype(np.int64, copy=False)


def _check_positive_int(value, name):
    if int(value) != value or int(value) < 1:
        raise ValueError(f"`{name}` must be an int >= 1. Received: {value!r}")


def _check_non_negative(value, name):
    if not float(value) >= 0:
        raise ValueError(f"`{name}` must be >= 0. Received: {value!r}")
