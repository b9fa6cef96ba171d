"""How much the persona rerank adds: the fitted reranker scored three ways
(first stage, rerank, persona only) over all users and by user and item
segment, with CIs and paired tests, its blend-weight sweep on valid and the
rerank stage's latency.
"""

import time

import numpy as np

from eval import metrics as metrics_lib
from eval import stats as stats_lib

EVAL_KS = (5, 10, 20)
EVAL_METRICS = ("hr", "mrr", "ndcg")


def evaluate_reranker(rec, train, test, num_bootstrap=1000, seed=0):
    """Views (all users; cold / warm users; head / tail items) of a fitted
    `PersonaReranker` against its own first stage and against persona-only
    scoring on `test`, with `train` (what it was fit on) masked.

    Returns:
        `(views, latency)`: per view the number of users, a bootstrap CI
        per model and metric, and paired tests of `rerank` and
        `persona_only` against `first_stage`; the rerank stage's latency
        (`rerank_latency`).
    """
    truth, exclude = test.to_csr(), train.to_csr()
    scorers = {
        "first_stage": rec.first_stage.score,
        "rerank": rec.score,
        "persona_only": with_blend(rec, 1.0),
    }
    user_seg = metrics_lib.user_segments(train.user_counts())
    item_seg = metrics_lib.item_segments(train.item_counts())
    views = {}
    for name, fn in scorers.items():
        result = metrics_lib.evaluate(fn, truth, exclude=exclude, ks=EVAL_KS)
        views.setdefault("all", {})[name] = result
        for seg in ("cold", "warm"):
            views.setdefault(f"{seg} users", {})[name] = result.subset(
                user_seg[seg][result.users]
            )
        for seg in ("head", "tail"):
            views.setdefault(f"{seg} items", {})[name] = metrics_lib.evaluate(
                fn,
                truth,
                exclude=exclude,
                ks=EVAL_KS,
                item_mask=item_seg[seg],
            )
    metric_names = [f"{m}@{k}" for k in EVAL_KS for m in EVAL_METRICS]
    table = {}
    for view, results in views.items():
        entry = {"num_users": results["first_stage"].num_users, "models": {}}
        for name, result in results.items():
            entry["models"][name] = {
                m: stats_lib.bootstrap_ci(
                    result.per_user[m], num_bootstrap, seed=seed
                )
                if result.num_users
                else None
                for m in metric_names
            }
        entry["paired"] = {}
        for name in ("rerank", "persona_only"):
            if not results["first_stage"].num_users:
                continue
            entry["paired"][name] = {
                m: stats_lib.paired_test(
                    results[name].per_user[m],
                    results["first_stage"].per_user[m],
                    seed=seed,
                )
                for m in metric_names
            }
        table[view] = entry
    latency = rerank_latency(rec, np.unique(test.user), seed)
    return table, latency


def format_report(report):
    """Markdown tables of an `evaluate_persona` report."""
    lines = [
        f"first stage: {report['first_stage']}, encoder: "
        f"{report['encoder']}, personas: {report['generator']}, M = "
        f"{report['candidates']}, blend weight {report['blend_weight']}, "
        f"backend {report['backend']}",
        "",
    ]
    metric_names = [f"{m}@{k}" for k in EVAL_KS for m in EVAL_METRICS]
    for view, entry in report["views"].items():
        lines += [
            f"### {view} ({entry['num_users']} users)",
            "",
            "| model | " + " | ".join(metric_names) + " |",
            "|---|" + "---|" * len(metric_names),
        ]
        for name, cis in entry["models"].items():
            cells = [
                "-"
                if ci is None
                else f"{ci['mean']:.4f} [{ci['low']:.3f}, {ci['high']:.3f}]"
                for ci in (cis[m] for m in metric_names)
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for name, tests in entry["paired"].items():
            cells = [
                f"{t['diff']:+.4f} p={t['p_value']:.3f}"
                + ("*" if t["significant"] else "")
                for t in (tests[m] for m in metric_names)
            ]
            lines.append(
                f"| {name} − first_stage | " + " | ".join(cells) + " |"
            )
        lines.append("")
    lat = report["latency"]
    lines += [
        "Rerank stage latency per user (first stage excluded): batched "
        f"{lat['batched_ms_per_user']:.3f} ms; one user at a time with "
        f"profile encoding p50 {lat['single_p50_ms']:.2f} ms, p95 "
        f"{lat['single_p95_ms']:.2f} ms ({lat['users']} users).",
        "",
        "Valid NDCG@10 by blend weight: "
        + ", ".join(
            f"{w}: {v:.4f}" for w, v in report["valid_blend_sweep"].items()
        ),
    ]
    return "\n".join(lines)


def blend_sweep(rec, valid, train_, chosen):
    """Valid NDCG@10 of the fitted reranker for a few blend weights (the
    configured one included), for the report; nothing is selected here."""
    weights = sorted({0.0, 0.25, 0.5, 0.75, 1.0, float(chosen)})
    out = {}
    for w in weights:
        result = metrics_lib.evaluate(
            with_blend(rec, w),
            valid.to_csr(),
            exclude=train_.to_csr(),
            ks=(10,),
        )
        out[str(w)] = result.summary()["ndcg@10"]
    rec.blend_weight = chosen
    return out


def with_blend(rec, weight):
    """`rec.score` with another blend weight (restored afterwards)."""

    def score(users):
        saved = rec.blend_weight
        rec.blend_weight = weight
        try:
            return rec.score(users)
        finally:
            rec.blend_weight = saved

    return score


def rerank_latency(rec, users, seed, sample=200, block=256):
    """Milliseconds per user of the rerank stage alone (candidates from the
    first stage are computed beforehand): batched over blocks of users with
    cached profiles, and one user at a time including encoding the
    profile from its N history texts."""
    rng = np.random.default_rng(seed)
    users = np.asarray(users, np.int64)
    if len(users) > 1000:
        users = np.sort(rng.choice(users, size=1000, replace=False))
    base = np.asarray(rec.first_stage.score(users), np.float32)
    cand, scores, valid = rec.candidates_for(users, base)
    rec.rerank(users[:2], cand[:2], scores[:2], valid[:2])  # warm-up
    start = time.perf_counter()
    for s in range(0, len(users), block):
        sl = slice(s, s + block)
        rec.rerank(users[sl], cand[sl], scores[sl], valid[sl])
    batched = (time.perf_counter() - start) * 1000 / max(len(users), 1)
    picks = rng.choice(len(users), size=min(sample, len(users)), replace=False)
    times = []
    inputs = rec.profile_inputs
    for i in [picks[0]] + list(picks):  # the first call warms up
        t0 = time.perf_counter()
        profile = rec.encode_profiles(
            inputs["profile"][users[i : i + 1]],
            inputs["profile_weights"][users[i : i + 1]],
        )
        rec.rerank(
            users[i : i + 1],
            cand[i : i + 1],
            scores[i : i + 1],
            valid[i : i + 1],
            profiles=profile,
        )
        times.append((time.perf_counter() - t0) * 1000)
    times = np.asarray(times[1:])
    return {
        "users": int(len(picks)),
        "batched_ms_per_user": float(batched),
        "single_p50_ms": float(np.percentile(times, 50)),
        "single_p95_ms": float(np.percentile(times, 95)),
    }
