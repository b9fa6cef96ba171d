"""The prior's actions: `train_prior`, `generate` and `evaluate_prior`.

- `train_prior`: split the interactions like the template (`data.split`),
  get the item embeddings (`diffusion.item_embeddings`, fit on the train
  split where they are learned), standardise them, and fit the
  `DiffusionPrior` on the train interactions, with early stopping and
  learning-rate cuts on a validation loss with fixed noise draws. Writes
  `<run>/prior/`: `prior.keras`, `embeddings.npz`, `prior.json`,
  `config.json`, `encoders.json`.
- `generate --user ID --n N`: N embeddings the user should like (guided by
  `diffusion.guidance_scale`), with the nearest catalog items of each, as
  JSON in `<run>/generated/user-ID.json`; `generate_embeddings` is the
  reusable part that returns them.
- `evaluate_prior`: the guidance sweep and the four views of
  `diffusion/evaluate.py` on held-out liked items, with bootstrap CIs and
  paired permutation tests; writes `<run>/prior_eval/`.
"""

import dataclasses
import json
import logging
import pathlib
import time

import keras
import numpy as np

import config as config_lib
import data
import recommenders
from content import images as images_lib
from diffusion import decode
from diffusion import embeddings as emb_lib
from diffusion import evaluate as eval_lib
from diffusion import poster_autoencoder as poster_lib
from diffusion import sampler as sampler_lib
from diffusion.prior import SCORE_LIKE
from diffusion.prior import SCORE_NULL
from diffusion.prior import DiffusionPrior
from diffusion.prior import PriorNetwork
from diffusion.prior import score_tokens
from eval import baselines
from eval import metrics as metrics_lib
from eval import scorer as scorer_lib
from eval import stats as stats_lib
from models import text_encoders
from runtime import runs

logger = logging.getLogger(__name__)

PRIOR_DIR = "prior"
PREVIEW_POSTERS = 8  # held-out posters in reconstructions.png
EVAL_DIR = "prior_eval"
GENERATED_DIR = "generated"
MODEL_FILE = "prior.keras"
EMBEDDINGS_FILE = "embeddings.npz"
INFO_FILE = "prior.json"


@dataclasses.dataclass
class TrainedPrior:
    """A trained prior and what sampling and reading samples need.

    Args:
        model: the `DiffusionPrior` (its `.network` samples).
        items: the catalog's `ItemEmbeddings` (raw space).
        mean: `(dim,)` float32, subtracted before the prior sees a vector.
        std: `(dim,)` float32, divided after.
        user_ids: raw id per user index.
        item_ids: raw id per item index.
        info: dict written to `prior.json`.
    """

    model: DiffusionPrior
    items: emb_lib.ItemEmbeddings
    mean: np.ndarray
    std: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    info: dict

    @property
    def network(self):
        return self.model.network

    def standardise(self, vectors):
        return ((vectors - self.mean) / self.std).astype(np.float32)

    def to_raw(self, standardised):
        return (standardised * self.std + self.mean).astype(np.float32)

    def user_index(self, raw_id):
        """Index of a raw user id given on the command line (`"7"` matches
        the integer id 7)."""
        keys = emb_lib.id_keys(self.user_ids)
        matches = np.flatnonzero(keys == emb_lib.id_keys([raw_id])[0])
        if not len(matches):
            raise ValueError(
                f"Unknown user id {raw_id!r}: not among the prior's "
                f"{len(self.user_ids)} users (e.g. "
                f"{self.user_ids[:3].tolist()})."
            )
        return int(matches[0])

    def sample(
        self,
        users,
        score,
        num_samples,
        guidance_scale,
        dc,
        seed,
        progress=False,
    ):
        """`(len(users), num_samples, dim)` standardised samples."""
        users = np.asarray(users, np.int32)
        return sampler_lib.generate(
            self.network,
            self.model.noise_schedule,
            self.model.parameterization,
            users,
            np.full(len(users), score, np.int32),
            num_samples=num_samples,
            guidance_scale=guidance_scale,
            method=dc.sampler,
            num_steps=dc.sampling_steps,
            eta=dc.eta,
            seed=seed,
            progress=progress,
        )

    def save(self, folder):
        folder = pathlib.Path(folder)
        self.model.save(folder / MODEL_FILE)
        np.savez(
            folder / EMBEDDINGS_FILE,
            vectors=self.items.vectors,
            available=self.items.available,
            mean=self.mean,
            std=self.std,
        )
        runs.atomic_write_text(
            folder / INFO_FILE, json.dumps(self.info, indent=2)
        )

    @classmethod
    def load(cls, folder):
        """What `train_prior` wrote into `folder`, on any backend."""
        folder = pathlib.Path(folder)
        if not (folder / MODEL_FILE).is_file():
            raise FileNotFoundError(
                f"No trained prior at {folder / MODEL_FILE}: run `python "
                "main.py train_prior` first (with the same --set options)."
            )
        model = keras.saving.load_model(folder / MODEL_FILE, compile=False)
        info = json.loads((folder / INFO_FILE).read_text())
        encoders = json.loads((folder / "encoders.json").read_text())
        with np.load(folder / EMBEDDINGS_FILE) as stored:
            items = emb_lib.ItemEmbeddings(
                stored["vectors"], stored["available"], info["source"]
            )
            mean, std = stored["mean"], stored["std"]
        return cls(
            model=model,
            items=items,
            mean=mean,
            std=std,
            user_ids=np.asarray(encoders["user_ids"]),
            item_ids=np.asarray(encoders["item_ids"]),
            info=info,
        )


@dataclasses.dataclass
class Generation:
    """Embeddings generated for one user (what `generate` writes).

    Args:
        user: the raw user id.
        embeddings: `(n, dim)` float32, raw embedding space.
        nearest: `(n, k)` int64 nearest catalog item indices per sample.
        cosines: `(n, k)` float32 their cosines.
        payload: the JSON-ready dict.
    """

    user: object
    embeddings: np.ndarray
    nearest: np.ndarray
    cosines: np.ndarray
    payload: dict


# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------


def train_prior(cfg):
    """Fit the diffusion prior on the train split; save it with its item
    embeddings into `<run>/prior/`.

    Returns:
        dict: what `prior.json` holds (sizes, epochs, losses, timings).
    """
    dc = cfg.diffusion
    dataset = data.load(cfg.data)
    train, valid, _ = _split(cfg, dataset)
    start = time.perf_counter()
    items = _item_embeddings(cfg, dataset, train, valid)
    embed_seconds = time.perf_counter() - start
    train_rows = _usable(train, items)
    if not len(train_rows):
        raise ValueError(
            "No training interaction has an item embedding: check "
            "`diffusion.item_embeddings`."
        )
    mean, std = emb_lib.standardise(items.vectors, train_rows.item)
    standard = ((items.vectors - mean) / std).astype(np.float32)
    x_train = _examples(cfg, train_rows, standard)
    valid_rows = _usable(valid, items)
    x_valid = None
    if len(valid_rows):
        x_valid = _examples(cfg, valid_rows, standard)
        rng = np.random.default_rng([cfg.seed, 1])
        x_valid["timestep"] = rng.integers(
            0, dc.timesteps, len(valid_rows)
        ).astype(np.int32)
        x_valid["noise"] = rng.standard_normal(
            x_valid["x0"].shape, dtype=np.float32
        )
    network = PriorNetwork(
        embedding_dim=items.dim,
        num_users=dataset.interactions.num_users,
        num_tokens=dc.num_tokens,
        width=dc.width,
        depth=dc.depth,
        num_heads=dc.num_heads,
        conditioning=dc.conditioning,
        num_timesteps=dc.timesteps,
    )
    prior = DiffusionPrior(
        network,
        num_timesteps=dc.timesteps,
        schedule=dc.schedule,
        parameterization=dc.parameterization,
        p_drop_user=dc.p_drop_user,
        p_drop_score=dc.p_drop_score,
        snr_weighting=dc.snr_weighting,
        snr_gamma=dc.snr_gamma,
        seed=cfg.seed,
    )
    tc = cfg.train
    # torch.compile costs more than it saves for a model this small on CPU
    # (the template's rule, see `KerasRecommender._compile`).
    jit = tc.jit_compile and keras.backend.backend() != "torch"
    prior.compile(
        optimizer=keras.optimizers.Adam(dc.learning_rate), jit_compile=jit
    )
    callbacks = []
    if x_valid is not None:
        callbacks = [
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=tc.early_stopping_patience,
                restore_best_weights=True,
            ),
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=tc.reduce_lr_factor,
                patience=tc.reduce_lr_patience,
                min_lr=tc.min_learning_rate,
            ),
        ]
    logger.info(
        "fitting the prior: examples=%d valid=%d dim=%d users=%d params=%d "
        "epochs<=%d batch=%d",
        len(train_rows),
        len(valid_rows),
        items.dim,
        dataset.interactions.num_users,
        prior.count_params(),
        dc.epochs,
        dc.batch_size,
    )
    start = time.perf_counter()
    history = prior.fit(
        x_train,
        batch_size=dc.batch_size,
        epochs=dc.epochs,
        validation_data=x_valid,
        callbacks=callbacks,
        verbose=tc.verbose,
    )
    fit_seconds = time.perf_counter() - start
    history = {
        k: [float(v) for v in values] for k, values in history.history.items()
    }
    best_epoch = (
        int(np.argmin(history["val_loss"])) + 1
        if "val_loss" in history
        else len(history["loss"])
    )
    info = {
        "source": items.source,
        "embedding_dim": items.dim,
        "items_with_embedding": int(items.available.sum()),
        "num_items": int(len(items.available)),
        "num_users": int(dataset.interactions.num_users),
        "train_examples": int(len(train_rows)),
        "valid_examples": int(len(valid_rows)),
        "score_tokens": _token_counts(x_train["score"]),
        "params": int(prior.count_params()),
        "best_epoch": best_epoch,
        "epochs_run": len(history["loss"]),
        "best_val_loss": min(history["val_loss"])
        if "val_loss" in history
        else None,
        "history": history,
        "embedding_seconds": embed_seconds,
        "fit_seconds": fit_seconds,
        "backend": keras.backend.backend(),
    }
    trained = TrainedPrior(
        prior, items, mean, std, dataset.user_ids, dataset.item_ids, info
    )
    out = prior_dir(cfg)
    with runs.staging_dir(out) as stage:
        runs.write_run_info(cfg, stage, dataset)
        trained.save(stage)
    logger.info(
        "prior: best epoch %d of %d, val loss %s, fit %.1fs -> %s",
        best_epoch,
        info["epochs_run"],
        info["best_val_loss"],
        fit_seconds,
        out,
    )
    return info


def generate(cfg, user=None, n=8, images=False):
    """Generate `n` item embeddings that user `user` (a raw id) should
    like, and write them with their nearest catalog items to
    `<run>/generated/user-<user>.json`. With `images`, also decode them
    (`decode.decoder`) into `<run>/generated/user_<user>.png`: one row per
    prior guidance scale (1 and `diffusion.guidance_scale`), one column per
    image guidance scale, the nearest catalog items as the last row.

    Returns:
        the `Generation` (embeddings as arrays, and the JSON payload).
    """
    generation = generate_embeddings(cfg, user, n)
    path = cfg.run_dir / GENERATED_DIR / f"user-{_safe_name(user)}.json"
    runs.atomic_write_text(path, json.dumps(generation.payload, indent=1))
    for i, sample in enumerate(generation.payload["samples"]):
        names = [
            entry["title"] or str(entry["item"])
            for entry in sample["nearest"][:3]
        ]
        print(f"sample {i}: nearest items {'; '.join(names)}")
    logger.info("generated %d embeddings for user %s -> %s", n, user, path)
    if images:
        _write_images(cfg, user, n, generation)
    return generation


def _write_images(cfg, user, n, generation):
    by_scale = {}
    for scale in dict.fromkeys((1.0, cfg.diffusion.guidance_scale)):
        scaled = dataclasses.replace(
            cfg,
            diffusion=dataclasses.replace(cfg.diffusion, guidance_scale=scale),
        )
        by_scale[scale] = (
            generation.embeddings
            if scale == cfg.diffusion.guidance_scale
            else generate_embeddings(scaled, user, n).embeddings
        )
    nearest = [
        entry["item"]
        for sample in generation.payload["samples"]
        for entry in sample["nearest"][:2]
    ]
    neighbours = list(dict.fromkeys(nearest))[:8]
    written = write_image_grids(
        cfg,
        [generation.user],
        {generation.user: by_scale},
        {generation.user: neighbours},
        cfg.run_dir / GENERATED_DIR,
    )
    for path in written.values():
        print(f"image grid: {path}")


def generate_embeddings(cfg, user, n):
    """Sample `n` embeddings for the raw user id `user` (score "like",
    guidance `diffusion.guidance_scale`) and find each one's nearest
    catalog items; nothing is written.

    Returns:
        a `Generation`.
    """
    if user is None:
        raise ValueError("`generate` needs a user: pass `--user ID`.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`--n` must be an int >= 1. Received: {n!r}")
    dc = cfg.diffusion
    trained = TrainedPrior.load(prior_dir(cfg))
    index = trained.user_index(user)
    samples = trained.sample(
        [index],
        SCORE_LIKE,
        n,
        dc.guidance_scale,
        dc,
        cfg.seed,
        progress=cfg.train.verbose > 0,
    )[0]
    raw = trained.to_raw(samples)
    items = trained.items
    nearest, cosines = eval_lib.nearest_items(
        raw, items.vectors, items.available, cfg.output.top_k
    )
    titles = _titles(cfg, trained.item_ids)
    seen = _seen_items(cfg, trained, index)
    payload = {
        "user": runs.plain(trained.user_ids[index]),
        "score": "like",
        "num_samples": n,
        "guidance_scale": dc.guidance_scale,
        "sampler": dc.sampler,
        "sampling_steps": dc.sampling_steps,
        "eta": dc.eta,
        "seed": cfg.seed,
        "embedding_source": trained.info["source"],
        "embedding_dim": int(raw.shape[1]),
        "backend": keras.backend.backend(),
        "samples": [
            {
                "embedding": [round(float(v), 6) for v in raw[i]],
                "nearest": [
                    {
                        "item": runs.plain(trained.item_ids[j]),
                        "title": titles[j],
                        "cosine": round(float(c), 6),
                        "seen": bool(j in seen),
                    }
                    for j, c in zip(nearest[i], cosines[i])
                ],
            }
            for i in range(n)
        ],
    }
    return Generation(
        user=payload["user"],
        embeddings=raw,
        nearest=nearest,
        cosines=cosines,
        payload=payload,
    )


def evaluate_prior(cfg):
    """Guidance sweep of the trained prior on held-out liked items.

    For a seeded sample of `diffusion.eval_users` users with at least one
    held-out (test) liked item, every scale in `diffusion.sweep_scales`
    draws `diffusion.samples_per_user` embeddings per user (score "like";
    the same noise for every scale), and is judged by an NCF fit on the
    train split with the item embeddings as its item side, by retrieval
    against the held-out liked items (train and valid items masked), by
    personalisation and by Frechet distance. Writes `<run>/prior_eval/`:
    `metrics.json`, `sweep.md`, `sweep.png` and the judge NCF.

    Returns:
        dict, the report.
    """
    dc = cfg.diffusion
    trained = TrainedPrior.load(prior_dir(cfg))
    dataset = data.load(cfg.data)
    if not (
        np.array_equal(
            emb_lib.id_keys(dataset.user_ids), emb_lib.id_keys(trained.user_ids)
        )
        and np.array_equal(
            emb_lib.id_keys(dataset.item_ids), emb_lib.id_keys(trained.item_ids)
        )
    ):
        raise ValueError(
            f"The data at {cfg.data.path} no longer matches the prior's id "
            f"maps ({prior_dir(cfg) / 'encoders.json'}): rerun train_prior."
        )
    train, valid, test = _split(cfg, dataset)
    items = trained.items
    known = train.concat(valid).to_csr()
    liked_test = _usable(test, items)
    if cfg.data.rating_col is not None:
        liked_test = liked_test.select(liked_test.value >= dc.like_threshold)
    truth = liked_test.to_csr()
    candidates = np.flatnonzero(np.diff(truth.indptr) > 0)
    if len(candidates) < 2:
        raise ValueError(
            "evaluate_prior needs at least 2 users with a held-out liked "
            f"item that has an embedding; found {len(candidates)}."
        )
    rng = np.random.default_rng(cfg.seed)
    count = len(candidates) if dc.eval_users <= 0 else dc.eval_users
    users = np.sort(
        rng.choice(candidates, min(count, len(candidates)), replace=False)
    )
    out = cfg.run_dir / EVAL_DIR
    with runs.staging_dir(out) as stage:
        runs.write_run_info(cfg, stage)
        judge, judge_report = _fit_judge(
            cfg, dataset, train, valid, test, trained, stage
        )
        report = _sweep(cfg, trained, judge, users, train, truth, known)
        report["judge"] = judge_report
        report["embedding_source"] = trained.info["source"]
        report["split"] = {
            "method": cfg.data.split,
            "train": len(train),
            "valid": len(valid),
            "test": len(test),
            "held_out_liked": len(liked_test),
        }
        report["backend"] = keras.backend.backend()
        table = eval_lib.sweep_table(report)
        runs.atomic_write_text(
            stage / "metrics.json",
            json.dumps(report, indent=2, default=runs.json_default),
        )
        runs.atomic_write_text(stage / "sweep.md", table + "\n")
        eval_lib.plot_sweep(report, stage / "sweep.png")
    print(table)
    logger.info("prior evaluation -> %s", out)
    return report


def prior_dir(cfg) -> pathlib.Path:
    """Where `train_prior` writes and the other actions read."""
    return cfg.run_dir / PRIOR_DIR


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _split(cfg, dataset):
    return data.split(
        dataset.interactions,
        cfg.data.split,
        cfg.data.valid_fraction,
        cfg.data.test_fraction,
        seed=cfg.seed,
    )


def _item_embeddings(cfg, dataset, train, valid):
    """The `diffusion.item_embeddings` source, aligned to the item index."""
    source = cfg.diffusion.item_embeddings
    if source in emb_lib.RECOMMENDER_SOURCES:
        sets = [f"model.name={source!r}"]
        if source == "ncf":
            sets.append("model.item_input='id'")
        rec = recommenders.build(config_lib.override(cfg, sets), dataset)
        logger.info("fitting %s for its item embeddings", source)
        rec.fit(train, valid)
        return emb_lib.ItemEmbeddings(
            emb_lib.from_recommender(rec),
            np.ones(dataset.interactions.num_items, bool),
            source,
        )
    if source == "als":
        als = baselines.ALS(seed=cfg.seed)
        als.fit(train)
        return emb_lib.ItemEmbeddings(
            als.item_factors,
            np.ones(dataset.interactions.num_items, bool),
            source,
        )
    if source == "text":
        _, texts = emb_lib.item_texts(cfg.data.item_features, dataset.item_ids)
        vectors = text_encoders.embed_texts(
            texts, progress=cfg.train.verbose > 0
        )
        return emb_lib.ItemEmbeddings(
            vectors, np.asarray([bool(t) for t in texts]), source
        )
    if source == "posters":
        ids, vectors = poster_embeddings(cfg)
        return emb_lib.align(ids, vectors, dataset.item_ids, "posters")
    return emb_lib.from_file(
        source, cfg.diffusion.item_ids_path, dataset.item_ids
    )


def _usable(interactions, items):
    """The interactions whose item has an embedding."""
    return interactions.select(items.available[interactions.item])


def _examples(cfg, interactions, standard):
    """Model inputs: standardised item embedding, user, score token."""
    dc = cfg.diffusion
    if cfg.data.rating_col is None:
        # Implicit data: every interaction is a like.
        score = np.full(len(interactions), SCORE_LIKE, np.int32)
    else:
        score = score_tokens(
            interactions.value, dc.like_threshold, dc.dislike_threshold
        )
    return {
        "x0": standard[interactions.item],
        "user": interactions.user.astype(np.int32),
        "score": score,
    }


def _fit_judge(cfg, dataset, train, valid, test, trained, stage):
    """An NCF whose item side is the (standardised) item embedding, fit on
    the train split with early stopping on valid; plus its held-out AUC."""
    dc = cfg.diffusion
    items = trained.items
    sets = [
        "model.name='ncf'",
        "model.item_input='features'",
        "model.loss='bce'",
        "model.pretrain=False",
    ]
    if cfg.data.rating_col is not None:
        sets += [
            f"model.like_threshold={dc.like_threshold!r}",
            f"model.dislike_threshold={dc.dislike_threshold!r}",
        ]
    judge_cfg = config_lib.override(cfg, sets)
    standard = np.where(
        items.available[:, None], trained.standardise(items.vectors), 0.0
    ).astype(np.float32)
    features = data.FeatureTable(
        values=standard,
        names=[f"embedding_{i}" for i in range(items.dim)],
        missing=~items.available,
        stats={},
    )
    judge = recommenders.build(
        judge_cfg,
        dataclasses.replace(
            dataset, item_features=features, user_features=None
        ),
    )
    logger.info("fitting the NCF judge on the item embeddings")
    judge.fit(_usable(train, items), _usable(valid, items))
    judge.save(stage / "judge")
    held_out = _usable(test, items)
    user, item, label = scorer_lib.held_out_pairs(
        held_out,
        train.concat(valid).concat(test).to_csr(),
        num_negatives=1,
        seed=cfg.seed,
        like_threshold=dc.like_threshold
        if cfg.data.rating_col is not None
        else None,
    )
    keep = items.available[item]
    logits = eval_lib.ncf_logits(judge.model, user[keep], standard[item[keep]])
    auc = scorer_lib.auc_with_ci(
        label[keep], logits, cfg.eval.num_bootstrap, seed=cfg.seed
    )
    logger.info(
        "judge AUC on %d held-out pairs: %.4f [%.4f, %.4f]",
        int(keep.sum()),
        auc["auc"],
        auc["low"],
        auc["high"],
    )
    return judge, {
        "best_epoch": judge.best_epoch,
        "held_out_pairs": int(keep.sum()),
        "auc": auc,
        "note": "held-out test interactions (liked = 1, others 0) plus "
        "one random unseen item per interaction (0)",
    }


def _sweep(cfg, trained, judge, users, train, truth, known):
    """All measures for every guidance scale, and the references."""
    dc = cfg.diffusion
    ks = tuple(cfg.eval.ks)
    k = min(ks)
    items = trained.items
    n = dc.samples_per_user
    num_users = len(trained.user_ids)
    boot = cfg.eval.num_bootstrap

    def retrieval(score_fn):
        result = metrics_lib.evaluate(
            score_fn,
            truth,
            exclude=known,
            ks=ks,
            users=users,
            item_mask=items.available,
        )
        if not np.array_equal(result.users, users):
            raise ValueError("Every evaluated user needs ground truth.")
        return result

    def summary(result):
        return {
            m: stats_lib.bootstrap_ci(result.per_user[m], boot, seed=cfg.seed)
            for m in (f"hr@{k}", f"ndcg@{k}", f"recall@{max(ks)}")
        }

    position = {int(u): i for i, u in enumerate(users)}
    liked_train = train
    if cfg.data.rating_col is not None:
        liked_train = train.select(train.value >= dc.like_threshold)
    liked_train = _usable(liked_train, items)
    real = _real_reference(cfg, trained, users, liked_train, truth)

    start = time.perf_counter()
    unconditional = trained.sample(users, SCORE_NULL, n, 0.0, dc, cfg.seed)
    uncond_raw = trained.to_raw(unconditional)
    uncond_result = retrieval(
        lambda block: eval_lib.cosine_item_scores(
            uncond_raw[[position[int(u)] for u in block]],
            items.vectors,
            items.available,
        )
    )
    references = _reference_rankings(
        cfg, trained, train, liked_train, users, retrieval
    )
    references["unconditional samples"] = uncond_result
    metric = f"ndcg@{k}"
    rows = []
    for scale in dc.sweep_scales:
        step = time.perf_counter()
        samples = (
            unconditional
            if scale == 0.0
            else trained.sample(users, SCORE_LIKE, n, scale, dc, cfg.seed)
        )
        raw = trained.to_raw(samples)
        ncf = eval_lib.score_samples(
            judge.model,
            users,
            samples,
            None if scale == 0.0 else unconditional,
            num_users,
            dc.random_users,
            seed=cfg.seed,
        )
        result = retrieval(
            lambda block, raw=raw: eval_lib.cosine_item_scores(
                raw[[position[int(u)] for u in block]],
                items.vectors,
                items.available,
            )
        )
        row = {
            "guidance_scale": float(scale),
            "ncf": {
                "own": stats_lib.bootstrap_ci(
                    ncf["posterior"], boot, seed=cfg.seed
                ),
                "random": stats_lib.bootstrap_ci(
                    ncf["random"], boot, seed=cfg.seed
                ),
                "own_vs_random": stats_lib.paired_test(
                    ncf["posterior"],
                    ncf["random"],
                    method="permutation",
                    seed=cfg.seed,
                ),
            },
            "retrieval": summary(result),
            "retrieval_tests": {
                name: stats_lib.paired_test(
                    result.per_user[metric],
                    ref.per_user[metric],
                    method="permutation",
                    seed=cfg.seed,
                )
                for name, ref in references.items()
            },
            "personalisation": eval_lib.personalisation(samples, cfg.seed),
            "frechet_distance": eval_lib.frechet_distance(
                samples.reshape(-1, samples.shape[-1]), real["train_liked"]
            ),
            "nearest_cosine": eval_lib.nearest_cosine(
                raw, items.vectors, items.available
            ),
            "seconds": time.perf_counter() - step,
        }
        if "prior" in ncf:
            row["ncf"]["unconditional"] = stats_lib.bootstrap_ci(
                ncf["prior"], boot, seed=cfg.seed
            )
            row["ncf"]["own_vs_unconditional"] = stats_lib.paired_test(
                ncf["posterior"],
                ncf["prior"],
                method="permutation",
                seed=cfg.seed,
            )
        rows.append(row)
        logger.info(
            "guidance %g: NCF own-random %+.3f (p=%.3g), %s %.4f, "
            "across/within %.3f, FD %.2f (%.1fs)",
            scale,
            row["ncf"]["own_vs_random"]["diff"],
            row["ncf"]["own_vs_random"]["p_value"],
            metric,
            row["retrieval"][metric]["mean"],
            row["personalisation"]["ratio"],
            row["frechet_distance"],
            row["seconds"],
        )
    real_ncf = _real_ncf(cfg, judge, trained, users, truth, num_users)
    return {
        "protocol": "users with a held-out (test) liked item that has an "
        "embedding; samples conditioned on (user, like); retrieval ranks "
        "available catalog items by their best cosine to the user's "
        "samples, train and valid items masked; paired tests are "
        "permutation tests over users",
        "num_users": int(len(users)),
        "samples_per_user": n,
        "sampler": {
            "method": dc.sampler,
            "steps": dc.sampling_steps,
            "eta": dc.eta,
        },
        "ks": list(ks),
        "sweep": rows,
        "references": {
            "retrieval": {
                name: summary(result) for name, result in references.items()
            },
            "personalisation": real["personalisation"],
            "frechet_distance": real["frechet_held_out"],
            "ncf_held_out_liked": real_ncf,
        },
        "sampling_seconds": time.perf_counter() - start,
    }


def _reference_rankings(cfg, trained, train, liked_train, users, retrieval):
    """MostPopular (fit on train) and the user's mean liked train item."""
    items = trained.items
    popular = baselines.MostPopular()
    popular.fit(train)
    counts = np.where(
        items.available, popular.score(np.zeros(1, np.int64))[0], -np.inf
    )
    results = {
        "most_popular": retrieval(
            lambda block: np.broadcast_to(counts, (len(block), len(counts)))
        )
    }
    profile = _user_profiles(
        liked_train,
        _usable(train, items),
        items.vectors,
        len(trained.user_ids),
    )
    results["user profile (mean liked train item)"] = retrieval(
        lambda block: eval_lib.cosine_item_scores(
            profile[block][:, None, :], items.vectors, items.available
        )
    )
    return results


def _user_profiles(liked, fallback, vectors, num_users):
    """Mean embedding of each user's liked train items (all train items
    for users without a like)."""
    total = np.zeros((num_users, vectors.shape[1]), np.float64)
    np.add.at(total, liked.user, vectors[liked.item])
    count = np.bincount(liked.user, minlength=num_users)
    empty = count == 0
    rows = empty[fallback.user]
    np.add.at(total, fallback.user[rows], vectors[fallback.item[rows]])
    count = count + np.bincount(fallback.user[rows], minlength=num_users)
    return (total / np.maximum(count, 1)[:, None]).astype(np.float32)


def _real_reference(cfg, trained, users, liked_train, truth):
    """Real liked items as reference points: personalisation of n liked
    train items per user, and the Frechet distance between the users'
    held-out liked items and their train liked items."""
    n = cfg.diffusion.samples_per_user
    rng = np.random.default_rng([cfg.seed, 2])
    standard = trained.standardise(trained.items.vectors)
    selected = np.isin(liked_train.user, users)
    sub = liked_train.select(selected)
    train_liked = standard[sub.item]
    per_user = []
    for_users = [u for u in users if np.any(sub.user == u)]
    order = np.argsort(sub.user, kind="stable")
    starts = np.searchsorted(sub.user[order], for_users)
    ends = np.searchsorted(sub.user[order], for_users, side="right")
    for lo, hi in zip(starts, ends):
        pick = order[lo + rng.integers(0, hi - lo, size=n)]
        per_user.append(standard[sub.item[pick]])
    held_out = standard[truth[users].indices]
    return {
        "train_liked": train_liked,
        "personalisation": eval_lib.personalisation(
            np.stack(per_user), cfg.seed
        ),
        "frechet_held_out": eval_lib.frechet_distance(held_out, train_liked),
    }


def _real_ncf(cfg, judge, trained, users, truth, num_users):
    """The judge on real held-out liked items: own user vs random users,
    the size of gap a perfect generator would reach."""
    rows = truth[users]
    owner = np.repeat(np.arange(len(users)), np.diff(rows.indptr))
    standard = trained.standardise(trained.items.vectors)[rows.indices]
    user_idx = np.asarray(users)[owner]
    own = eval_lib.ncf_logits(judge.model, user_idx, standard)
    rng = np.random.default_rng([cfg.seed, 3])
    others = rng.integers(0, num_users - 1, size=len(user_idx))
    others = others + (others >= user_idx)
    random = eval_lib.ncf_logits(judge.model, others, standard)
    count = np.bincount(owner, minlength=len(users))
    own_mean = np.bincount(owner, own, len(users)) / count
    random_mean = np.bincount(owner, random, len(users)) / count
    boot = cfg.eval.num_bootstrap
    return {
        "own": stats_lib.bootstrap_ci(own_mean, boot, seed=cfg.seed),
        "random": stats_lib.bootstrap_ci(random_mean, boot, seed=cfg.seed),
        "own_vs_random": stats_lib.paired_test(
            own_mean, random_mean, method="permutation", seed=cfg.seed
        ),
    }


def _titles(cfg, item_ids):
    """Display titles per item index, or "" where there are none."""
    try:
        titles, _ = emb_lib.item_texts(cfg.data.item_features, item_ids)
    except (ValueError, FileNotFoundError) as e:
        logger.info("no item titles: %s", e)
        return [""] * len(item_ids)
    return titles


def _seen_items(cfg, trained, index):
    """Item indices the user interacted with (in all of the data)."""
    dataset = data.load(cfg.data)
    if not np.array_equal(
        emb_lib.id_keys(dataset.user_ids), emb_lib.id_keys(trained.user_ids)
    ):
        raise ValueError(
            f"The data at {cfg.data.path} no longer matches the prior's id "
            "maps: rerun train_prior."
        )
    x = dataset.interactions
    return set(x.item[x.user == index].tolist())


def _token_counts(tokens):
    names = {0: "dislike", 1: "like", 2: "null"}
    counts = np.bincount(tokens, minlength=3)
    return {names[i]: int(c) for i, c in enumerate(counts)}


def _safe_name(value):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(value))


# ---------------------------------------------------------------------------
# Decoding: the poster autoencoder, the Stable Diffusion adapter, grids
# ---------------------------------------------------------------------------


def train_poster_decoder(cfg):
    """Train the poster autoencoder, evaluate it on held-out posters, and
    write `<run>/poster_decoder/`: `model.keras`, `embeddings.npz` (every
    poster's embedding and split), `metrics.json`, `reconstructions.png`,
    `history.json`, `config.json`.

    Returns:
        The metrics dict.
    """
    dc = cfg.decode
    item_ids, posters = images_lib.cached_posters(
        posters_folder(cfg),
        dc.image_height,
        dc.image_width,
        dc.cache_dir,
        progress=cfg.train.verbose > 0,
    )
    split = poster_lib.split_posters(
        len(item_ids), dc.valid_fraction, dc.test_fraction, cfg.seed
    )
    train_x, valid_x, test_x = (posters[split == s] for s in range(3))
    logger.info(
        "poster model: posters=%d train=%d valid=%d test=%d size=%dx%d "
        "embedding_dim=%d",
        len(item_ids),
        len(train_x),
        len(valid_x),
        len(test_x),
        dc.image_height,
        dc.image_width,
        dc.embedding_dim,
    )
    model = poster_lib.PosterAutoencoder(
        dc.image_height,
        dc.image_width,
        dc.embedding_dim,
        dc.filters,
        latent_noise=dc.latent_noise,
        seed=cfg.seed,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(dc.learning_rate),
        loss=poster_lib.PosterReconstructionLoss(dc.ssim_weight),
        jit_compile=cfg.train.jit_compile and "auto",
    )
    callbacks = [
        keras.callbacks.EarlyStopping(
            patience=cfg.train.early_stopping_patience,
            restore_best_weights=True,
        ),
        keras.callbacks.ReduceLROnPlateau(
            factor=cfg.train.reduce_lr_factor,
            patience=cfg.train.reduce_lr_patience,
            min_lr=cfg.train.min_learning_rate,
        ),
    ]
    start = time.perf_counter()
    history = model.fit(
        poster_lib.PosterBatches(train_x, dc.batch_size, seed=cfg.seed),
        validation_data=poster_lib.PosterBatches(
            valid_x, dc.batch_size, shuffle=False
        ),
        epochs=dc.epochs,
        callbacks=callbacks,
        verbose=cfg.train.verbose,
    )
    fit_seconds = time.perf_counter() - start
    embeddings = poster_lib.encode_posters(
        model.encoder, posters, dc.batch_size
    )
    test_pred = poster_lib.decode_embeddings(
        model.decoder, embeddings[split == 2], dc.batch_size
    )
    pca_pred = poster_lib.pca_reconstruction(train_x, test_x, dc.embedding_dim)
    mean_pred = np.broadcast_to(
        np.round(train_x.mean(axis=0)).astype(np.uint8), test_x.shape
    )
    metrics = {
        "test_posters": int(len(test_x)),
        "image_size": [dc.image_height, dc.image_width],
        "embedding_dim": dc.embedding_dim,
        "epochs_run": len(history.history["loss"]),
        "fit_seconds": round(fit_seconds, 1),
        "keras_backend": keras.backend.backend(),
        "autoencoder": poster_lib.reconstruction_metrics(test_x, test_pred),
        "pca": poster_lib.reconstruction_metrics(test_x, pca_pred),
        "mean_poster": poster_lib.reconstruction_metrics(test_x, mean_pred),
    }
    logger.info(
        "poster model test: mse=%.4f psnr=%.2f ssim=%.3f (pca-%d mse=%.4f "
        "ssim=%.3f; mean poster mse=%.4f ssim=%.3f)",
        metrics["autoencoder"]["mse"],
        metrics["autoencoder"]["psnr"],
        metrics["autoencoder"]["ssim"],
        dc.embedding_dim,
        metrics["pca"]["mse"],
        metrics["pca"]["ssim"],
        metrics["mean_poster"]["mse"],
        metrics["mean_poster"]["ssim"],
    )
    final = cfg.run_dir / poster_lib.FOLDER_NAME
    with runs.staging_dir(final) as stage:
        model.save(stage / poster_lib.MODEL_FILE)
        np.savez(
            stage / poster_lib.EMBEDDINGS_FILE,
            item_ids=item_ids,
            embeddings=embeddings,
            split=split,
        )
        runs.write_json(stage / "metrics.json", metrics)
        runs.write_json(
            stage / "history.json",
            {
                k: [float(v) for v in vals]
                for k, vals in history.history.items()
            },
        )
        runs.write_run_info(cfg, stage)
        n = min(PREVIEW_POSTERS, len(test_x))
        images_lib.write_grid(
            stage / "reconstructions.png",
            [list(test_x[:n]), list(test_pred[:n]), list(pca_pred[:n])],
            row_labels=["poster", "autoenc", f"pca-{dc.embedding_dim}"],
            title="held-out posters and their reconstructions",
        )
    logger.info("poster model written to %s", final)
    return metrics


def poster_embeddings(cfg):
    """Every poster's embedding from the run's poster model.

    Trains the model first (`train_poster_decoder`) when the run folder has
    none, so the diffusion prior can call this on a fresh checkout.

    Returns:
        `(item_ids, embeddings)`: `(n,)` int64 raw item ids (MovieLens ids
        for the ml-1m-posters set) and `(n, decode.embedding_dim)` float32
        unit vectors.
    """
    path = cfg.run_dir / poster_lib.FOLDER_NAME / poster_lib.EMBEDDINGS_FILE
    if not path.is_file():
        logger.info(
            "no poster embeddings at %s: training the poster model", path
        )
        train_poster_decoder(cfg)
    with np.load(path) as stored:
        return stored["item_ids"], stored["embeddings"].astype(np.float32)


def posters_folder(cfg) -> pathlib.Path:
    """`decode.posters_dir` with a leading `{shared}` resolved."""
    return pathlib.Path(config_lib.resolve_shared(cfg.decode.posters_dir))


def train_sd_adapter(cfg):
    """Train the `decode.EmbeddingAdapter` on (poster, poster embedding) pairs
    with the frozen Stable Diffusion denoiser; write `<run>/sd_adapter/`
    (`adapter.keras`, `adapter.json`, `history.json`, `config.json`).

    Returns:
        dict with the final loss, posters used and seconds.
    """
    dc = cfg.decode
    parts = decode.load_stable_diffusion(
        dc.sd_height, dc.sd_width, dc.sd_weights, with_image_encoder=True
    )
    item_ids, embeddings = poster_embeddings(cfg)
    poster_ids, paths = images_lib.find_posters(posters_folder(cfg))
    keep = np.flatnonzero(np.isin(item_ids, poster_ids))
    if dc.max_posters:
        keep = np.sort(
            np.random.default_rng(cfg.seed).permutation(keep)[: dc.max_posters]
        )
    by_id = dict(zip(poster_ids.tolist(), paths))
    chosen = [by_id[i] for i in item_ids[keep].tolist()]
    logger.info(
        "sd adapter: posters=%d size=%dx%d weights=%s",
        len(chosen),
        dc.sd_height,
        dc.sd_width,
        dc.sd_weights,
    )
    latents = decode.encode_latents(
        parts["image_encoder"],
        chosen,
        dc.sd_height,
        dc.sd_width,
        dc.adapter_batch_size,
        progress=cfg.train.verbose > 0,
    )
    base, unconditional = decode.prompt_contexts(
        parts["text_encoder"], dc.prompt
    )
    adapter = decode.EmbeddingAdapter(
        embeddings.shape[1],
        dc.num_context_tokens,
        hidden_dim=dc.adapter_hidden_dim,
    )
    trainer = decode.AdapterTrainer(
        adapter,
        parts["diffusion_model"],
        base,
        unconditional,
        dc.cond_drop_prob,
        seed=cfg.seed,
    )
    trainer.compile(optimizer=keras.optimizers.Adam(dc.adapter_learning_rate))
    start = time.perf_counter()
    history = trainer.fit(
        {"embedding": embeddings[keep], "latent": latents},
        batch_size=dc.adapter_batch_size,
        epochs=dc.adapter_epochs,
        verbose=cfg.train.verbose,
    )
    result = {
        "posters": len(chosen),
        "final_loss": float(history.history["loss"][-1]),
        "fit_seconds": round(time.perf_counter() - start, 1),
        "sd_weights": dc.sd_weights,
        "sd_size": [dc.sd_height, dc.sd_width],
        "keras_backend": keras.backend.backend(),
    }
    with runs.staging_dir(cfg.run_dir / decode.ADAPTER_FOLDER) as stage:
        adapter.save(stage / decode.ADAPTER_FILE)
        runs.write_json(stage / "adapter.json", result)
        runs.write_json(
            stage / "history.json",
            {
                k: [float(v) for v in vals]
                for k, vals in history.history.items()
            },
        )
        runs.write_run_info(cfg, stage)
    logger.info(
        "sd adapter: loss=%.4f written to %s",
        result["final_loss"],
        cfg.run_dir / decode.ADAPTER_FOLDER,
    )
    return result


def make_decoder(cfg):
    """The decoder named by `decode.decoder`, ready to `.decode(...)`.

    Returns:
        `decode.PosterImageDecoder` (from `<run>/poster_decoder/`) or
        `decode.StableDiffusionDecoder` (KerasCV components, adapter from
        `<run>/sd_adapter/` when trained).

    Raises:
        ValueError: unknown decoder name.
        FileNotFoundError: the poster model or the adapter is not trained,
            or pretrained weights cannot be downloaded
            (`decode.WeightsUnavailable`).
    """
    name = cfg.decode.decoder
    if name == "poster_decoder":
        return decode.PosterImageDecoder.from_folder(
            cfg.run_dir / poster_lib.FOLDER_NAME, cfg.decode.batch_size
        )
    if name == "stable_diffusion":
        return _stable_diffusion_decoder(cfg)
    raise ValueError(
        f"`decode.decoder` must be one of {decode.DECODERS}. Received: {name!r}"
    )


def _stable_diffusion_decoder(cfg):
    """Components per `decode.sd_*`, the adapter from the run folder
    (a random one when the SD weights are random too)."""
    dc = cfg.decode
    parts = decode.load_stable_diffusion(
        dc.sd_height, dc.sd_width, dc.sd_weights
    )
    adapter_path = cfg.run_dir / decode.ADAPTER_FOLDER / decode.ADAPTER_FILE
    if adapter_path.is_file():
        adapter = keras.saving.load_model(adapter_path, compile=False)
        decode.check_adapter_mode(adapter_path.parent, dc.sd_weights)
    elif dc.sd_weights == "random":
        logger.warning(
            "no trained adapter at %s: using a random one (the SD "
            "weights are random too)",
            adapter_path,
        )
        adapter = decode.EmbeddingAdapter(
            dc.embedding_dim,
            dc.num_context_tokens,
            hidden_dim=dc.adapter_hidden_dim,
        )
    else:
        raise FileNotFoundError(
            f"No trained embedding adapter at {adapter_path}. Train it "
            "with `python main.py train_sd_adapter` (same --set "
            "options), or use `--set decode.decoder=poster_decoder`."
        )
    base, unconditional = decode.prompt_contexts(
        parts["text_encoder"], dc.prompt
    )
    mode = (
        "stable_diffusion (pretrained weights)"
        if dc.sd_weights == "pretrained"
        else "stable_diffusion (RANDOM weights: checks the wiring, "
        "the pictures are noise)"
    )
    return decode.StableDiffusionDecoder(
        adapter,
        parts["diffusion_model"],
        parts["decoder"],
        base,
        unconditional,
        mode=mode,
        verbose=cfg.train.verbose > 0,
    )


def write_image_grids(
    cfg, user_ids, embeddings_by_user, neighbours_by_user, out_dir, decoder=None
):
    """One PNG per user: generated items at every (prior scale, image
    scale), and the user's nearest real catalog items as the last row.

    Args:
        cfg: `Config` (`decode.*`, `seed`).
        user_ids: raw user ids, in output order.
        embeddings_by_user: `{user: {prior_scale: (n, d)}}`, or
            `{user: (n, d)}` when the prior ran at one scale.
        neighbours_by_user: `{user: raw item ids}` shown as posters (grey
            when an item has no poster).
        out_dir: output folder (created).
        decoder: optional decoder; default `make_decoder(cfg)`.

    Returns:
        `{user: path}` of the written `user_<id>.png` files.
    """
    decoder = decoder or make_decoder(cfg)
    scales = tuple(cfg.decode.image_guidance_scales)
    poster_ids, paths = images_lib.find_posters(posters_folder(cfg))
    by_id = dict(zip(poster_ids.tolist(), paths))
    logger.info(
        "image grids: decoder=%s users=%d image scales=%s",
        decoder.mode,
        len(user_ids),
        scales,
    )
    written = {}
    for user in user_ids:
        if user not in embeddings_by_user:
            raise ValueError(f"No generated embeddings for user {user!r}.")
        generated = embeddings_by_user[user]
        if not isinstance(generated, dict):
            generated = {None: generated}
        start = time.perf_counter()
        rows, labels = decode.guidance_sweep(
            decoder, generated, scales, seed=cfg.seed, steps=cfg.decode.steps
        )
        seconds = (time.perf_counter() - start) / max(
            1, len(rows) * len(scales)
        )
        neighbours = [int(i) for i in neighbours_by_user.get(user, ())]
        rows.append(decode.poster_row(neighbours, by_id, rows[0][0].shape[:2]))
        labels.append("nearest")
        ncols = max(len(r) for r in rows)
        col_labels = [f"w={w:g}" for w in scales]
        col_labels += [""] * (ncols - len(col_labels))
        path = images_lib.write_grid(
            pathlib.Path(out_dir) / f"user_{user}.png",
            rows,
            row_labels=labels,
            col_labels=col_labels,
            title=f"user {user}: {decoder.mode}",
        )
        logger.info(
            "image grid: user=%s images=%d decode=%.3fs/image %s",
            user,
            len(rows[:-1]) * len(scales),
            seconds,
            path,
        )
        written[user] = path
    return written
