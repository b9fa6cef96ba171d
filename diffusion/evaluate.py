"""How good are generated item embeddings? Host-side measures and reports.

Generated embeddings belong to no catalog item, so a ranking metric alone
cannot judge them. `evaluate_prior` (in `actions.py`) combines four views,
each computed by one function here:

- a learned judge: an NCF whose item side reads the embedding itself
  (`model.item_input="features"`) scores each generated embedding for the
  user it was generated for (the "posterior" score), for random other users,
  and scores unconditional samples for the same user (the "prior" score);
  `score_samples` returns the per-user means that the paired tests use;
- retrieval: the catalog ranked by cosine to the user's generated
  embeddings (`cosine_item_scores`), scored against the user's held-out
  liked items with the full-ranking metrics of `eval/metrics.py`;
- personalisation: distances between samples of different users against
  distances between samples of one user (`personalisation`);
- distribution match: Frechet distance between generated and real
  embeddings (`frechet_distance`, the FID formula on embeddings) and how
  close samples fall to some real item (`nearest_cosine`).

Plus the sweep report: a Markdown table and a figure over guidance scales.
"""

import io
import logging
import pathlib

import keras
import numpy as np
import scipy.linalg

logger = logging.getLogger(__name__)

_PREDICT_BATCH = 4096


def unit_rows(x):
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def cosine_item_scores(samples, item_vectors, available):
    """Each item's best cosine to any of a user's samples.

    Args:
        samples: `(users, n, dim)` generated embeddings (raw space).
        item_vectors: `(num_items, dim)` catalog embeddings.
        available: `(num_items,)` bool; other items score -inf.

    Returns:
        `(users, num_items)` float32.
    """
    samples = unit_rows(samples)
    items = unit_rows(item_vectors)
    users, n, dim = samples.shape
    cos = samples.reshape(users * n, dim) @ items.T
    best = cos.reshape(users, n, -1).max(axis=1)
    return np.where(available[None, :], best, -np.inf).astype(np.float32)


def nearest_items(samples, item_vectors, available, k):
    """Top-`k` catalog items by cosine for each sample.

    Args:
        samples: `(n, dim)` embeddings.
        item_vectors: `(num_items, dim)`.
        available: `(num_items,)` bool; only these are returned.
        k: int >= 1 (clipped to the available count).

    Returns:
        `(items, cosines)`: `(n, k)` int64 item indices, best first, and
        their float32 cosines.
    """
    cos = unit_rows(samples) @ unit_rows(item_vectors).T
    cos = np.where(available[None, :], cos, -np.inf)
    k = int(min(k, available.sum()))
    top = np.argpartition(-cos, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(cos, top, axis=1), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    return top.astype(np.int64), np.take_along_axis(cos, top, axis=1)


def nearest_cosine(samples, item_vectors, available):
    """Mean over samples of the cosine to the closest available item."""
    flat = np.asarray(samples).reshape(-1, np.shape(samples)[-1])
    _, cos = nearest_items(flat, item_vectors, available, 1)
    return float(cos.mean())


def ncf_logits(model, users, vectors):
    """NCF logits of (user, embedding) pairs for a features-only NCF.

    Args:
        model: a built `NCF` with `item_input="features"`.
        users: `(n,)` int user indices.
        vectors: `(n, dim)` item embeddings in the space the NCF read.

    Returns:
        `(n,)` float32 logits. Batches are padded to one fixed size, so
        compiled backends trace once.
    """
    users = np.asarray(users, np.int32)
    vectors = np.asarray(vectors, np.float32)
    out = np.empty(len(users), np.float32)
    batch = min(_PREDICT_BATCH, 1 << max(0, (len(users) - 1).bit_length()))
    for start in range(0, len(users), batch):
        stop = min(start + batch, len(users))
        pad = batch - (stop - start)
        u, v = users[start:stop], vectors[start:stop]
        if pad:
            u = np.concatenate([u, np.repeat(u[-1:], pad)])
            v = np.concatenate([v, np.repeat(v[-1:], pad, axis=0)])
        logits = model.predict_on_batch({"user": u, "item_features": v})
        out[start:stop] = np.asarray(_to_numpy(logits["logit"]), np.float32)[
            : stop - start
        ]
    return out


def score_samples(
    model, users, samples, unconditional, num_users, random_users, seed=0
):
    """Per-user NCF means for the posterior check.

    Args:
        model: features-only `NCF` (the judge).
        users: `(U,)` int indices of the conditioning users.
        samples: `(U, n, dim)` samples generated for those users.
        unconditional: `(U, n, dim)` unconditional samples (or None).
        num_users: int, users the judge knows (random users come from
            all of them, never the conditioning user).
        random_users: int >= 1, other users scoring each sample.
        seed: int.

    Returns:
        dict of `(U,)` float64 arrays: `posterior` (mean logit of the
        user's own samples), `random` (mean logit of the same samples for
        random other users) and, with `unconditional`, `prior` (mean logit
        of unconditional samples for the user).
    """
    users = np.asarray(users, np.int64)
    count, n, dim = samples.shape
    flat = samples.reshape(count * n, dim)
    owner = np.repeat(users, n)
    out = {
        "posterior": ncf_logits(model, owner, flat)
        .reshape(count, n)
        .mean(axis=1)
        .astype(np.float64)
    }
    rng = np.random.default_rng(seed)
    # Draw from the num_users - 1 others: shift draws at or above the owner.
    others = rng.integers(0, num_users - 1, size=(count * n, random_users))
    others = others + (others >= owner[:, None])
    logits = ncf_logits(
        model, others.reshape(-1), np.repeat(flat, random_users, axis=0)
    )
    out["random"] = (
        logits.reshape(count, n * random_users).mean(axis=1).astype(np.float64)
    )
    if unconditional is not None:
        out["prior"] = (
            ncf_logits(model, owner, unconditional.reshape(count * n, dim))
            .reshape(count, n)
            .mean(axis=1)
            .astype(np.float64)
        )
    return out


def personalisation(samples, seed=0):
    """Across-user vs within-user spread of samples.

    Args:
        samples: `(U, n, dim)` with U >= 2 and n >= 2.
        seed: int, for pairing each user with another one.

    Returns:
        dict with `within` (mean Euclidean distance between two samples of
        one user), `across` (between sample j of a user and sample j of
        another random user) and `ratio` = across / within (1: samples
        ignore the user; larger: personalised).
    """
    samples = np.asarray(samples, np.float64)
    count, n, _ = samples.shape
    if count < 2 or n < 2:
        raise ValueError(
            "Personalisation needs >= 2 users and >= 2 samples each. "
            f"Received: shape={samples.shape}"
        )
    diff = samples[:, :, None, :] - samples[:, None, :, :]
    dist = np.sqrt((diff**2).sum(-1))  # (U, n, n)
    within = dist.sum(axis=(1, 2)) / (n * (n - 1))
    rng = np.random.default_rng(seed)
    partner = (np.arange(count) + rng.integers(1, count, size=count)) % count
    across = np.sqrt(((samples - samples[partner]) ** 2).sum(-1)).mean(1)
    within_mean, across_mean = float(within.mean()), float(across.mean())
    return {
        "within": within_mean,
        "across": across_mean,
        "ratio": across_mean / max(within_mean, 1e-12),
    }


def frechet_distance(a, b):
    """Frechet distance between Gaussians fitted to two sets of vectors:
    `|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))` (Heusel et al.
    2017, used on embeddings instead of Inception features).

    Args:
        a: `(n_a, dim)`, b: `(n_b, dim)`, each with at least 2 rows.

    Returns:
        float >= 0.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            "Frechet distance needs two (n >= 2, dim) arrays of one width. "
            f"Received: {a.shape} and {b.shape}"
        )
    mu = a.mean(0) - b.mean(0)
    cov_a = np.cov(a, rowvar=False)
    cov_b = np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    root = np.real(root)
    value = mu @ mu + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root)
    return float(max(value, 0.0))


def sweep_table(report):
    """Markdown table of the guidance sweep plus the reference rows.

    Args:
        report: the dict `evaluate_prior` writes (`sweep`, `references`,
            `ks`).

    Returns:
        str.
    """
    k = min(report["ks"])
    top = max(report["ks"])
    head = (
        "| guidance s | NCF own user | NCF random users | own - random "
        "[95% CI] | p | own - unconditional [95% CI] | p | "
        f"HR@{k} | NDCG@{k} | R@{top} | across/within | FD | NN cos |"
    )
    lines = [head, "|" + "---|" * 13]
    for row in report["sweep"]:
        ncf = row["ncf"]
        gap, prior = ncf["own_vs_random"], ncf.get("own_vs_unconditional")
        retrieval = row["retrieval"]
        cells = [
            f"{row['guidance_scale']:g}",
            _mean_ci(ncf["own"]),
            _mean_ci(ncf["random"]),
            f"{gap['diff']:+.3f} [{gap['ci_low']:+.3f}, {gap['ci_high']:+.3f}]",
            f"{gap['p_value']:.3g}",
            "-"
            if prior is None
            else f"{prior['diff']:+.3f} "
            f"[{prior['ci_low']:+.3f}, {prior['ci_high']:+.3f}]",
            "-" if prior is None else f"{prior['p_value']:.3g}",
            _mean_ci(retrieval[f"hr@{k}"]),
            _mean_ci(retrieval[f"ndcg@{k}"]),
            _mean_ci(retrieval[f"recall@{top}"]),
            f"{row['personalisation']['ratio']:.3f}",
            f"{row['frechet_distance']:.2f}",
            f"{row['nearest_cosine']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"| reference | HR@{k} | NDCG@{k} | R@{top} |")
    lines.append("|---|---|---|---|")
    for name, ref in report["references"]["retrieval"].items():
        cells = [
            _mean_ci(ref[m]) for m in (f"hr@{k}", f"ndcg@{k}", f"recall@{top}")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(report, path):
    """Four panels over the guidance scale: the NCF own-vs-random gap,
    HR@K (with the reference lines), personalisation, Frechet distance.
    Written atomically as PNG."""
    # matplotlib costs a second to import; only the report plots need it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the Agg backend

    k = min(report["ks"])
    rows = report["sweep"]
    scales = [r["guidance_scale"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    gap = [r["ncf"]["own_vs_random"] for r in rows]
    axes[0].errorbar(
        scales,
        [g["diff"] for g in gap],
        yerr=[
            [g["diff"] - g["ci_low"] for g in gap],
            [g["ci_high"] - g["diff"] for g in gap],
        ],
        marker="o",
        capsize=3,
    )
    axes[0].axhline(0.0, color="grey", lw=0.8)
    axes[0].set_title("NCF logit: own user - random users")
    metric = f"hr@{k}"
    hr = [r["retrieval"][metric] for r in rows]
    axes[1].errorbar(
        scales,
        [h["mean"] for h in hr],
        yerr=[
            [h["mean"] - h["low"] for h in hr],
            [h["high"] - h["mean"] for h in hr],
        ],
        marker="o",
        capsize=3,
        label="guided samples",
    )
    for name, ref in report["references"]["retrieval"].items():
        axes[1].axhline(
            ref[metric]["mean"],
            ls="--",
            lw=1,
            label=name,
            color=_REFERENCE_COLOURS.get(name, "grey"),
        )
    axes[1].legend(fontsize=7)
    axes[1].set_title(f"HR@{k} of nearest catalog items")
    axes[2].plot(
        scales, [r["personalisation"]["ratio"] for r in rows], marker="o"
    )
    axes[2].axhline(
        report["references"]["personalisation"]["ratio"],
        ls="--",
        lw=1,
        color="grey",
        label="real liked items",
    )
    axes[2].legend(fontsize=7)
    axes[2].set_title("across-user / within-user distance")
    axes[3].plot(scales, [r["frechet_distance"] for r in rows], marker="o")
    axes[3].axhline(
        report["references"]["frechet_distance"],
        ls="--",
        lw=1,
        color="grey",
        label="real held-out vs train",
    )
    axes[3].legend(fontsize=7)
    axes[3].set_title("Frechet distance to real liked items")
    for ax in axes:
        ax.set_xlabel("guidance scale s")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


_REFERENCE_COLOURS = {
    "most_popular": "tab:red",
    "unconditional samples": "tab:grey",
    "user profile (mean liked train item)": "tab:green",
}


def _mean_ci(summary):
    return (
        f"{summary['mean']:.3f} [{summary['low']:.3f}, {summary['high']:.3f}]"
    )


def _to_numpy(value):

    return keras.ops.convert_to_numpy(value)
