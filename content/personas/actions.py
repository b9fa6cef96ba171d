"""The persona actions: `build_personas` writes item personas as JSON lines,
`evaluate_persona` compares the first stage with the persona rerank under
leave-one-out.
"""

import dataclasses
import json
import logging
import os
import pathlib
import time

import keras
import numpy as np

import data
import recommenders
from content.personas import corpus
from content.personas import evaluate as persona_eval
from content.personas import generate
from content.personas import llm
from runtime import runs

logger = logging.getLogger(__name__)


def build_personas(cfg, on="all"):
    """Write `<run>/personas/personas.jsonl` (one persona per line, with its
    evidence) and `summary.json`, generated from all interactions
    (`on="all"`) or from the training split of `data.split` (`"train"`,
    for evaluation without leakage)."""
    pc = cfg.persona
    if on not in ("all", "train"):
        raise ValueError(f"`--on` must be 'all' or 'train'. Received: {on!r}")
    dataset = data.load(cfg.data)
    x = dataset.interactions
    if on == "train":
        x = data.split(
            x,
            cfg.data.split,
            cfg.data.valid_fraction,
            cfg.data.test_fraction,
            seed=cfg.seed,
        )[0]
    source = generate.make_source(
        pc, corpus.build_corpus(dataset, cfg.data, pc), dataset, cfg.seed
    )
    if source.fixed is not None:
        raise ValueError(
            "`persona.personas_path` is set: build_personas makes personas, "
            "it does not read them. Set it to None."
        )
    start = time.perf_counter()
    personas = source.generate(x)
    summary = {"generator": pc.generator, "on": on}
    if pc.generator == "llm":
        client = llm.LLMClient(
            pc.llm_endpoint,
            pc.llm_model,
            api_key=os.environ.get(pc.llm_api_key_env),
            timeout=pc.llm_timeout,
            retries=pc.llm_retries,
            requests_per_minute=pc.llm_requests_per_minute,
            cache_dir=cfg.run_dir / "persona_llm_cache",
        )
        personas, llm_summary = llm.llm_personas(
            client,
            personas,
            source.corpus.item_names,
            source.item_terms(x),
            x.item_counts(),
            pc.num_personas,
            pathlib.Path(pc.prompt_dir),
            pc.llm_max_items,
        )
        summary["llm"] = llm_summary
    sizes = np.bincount(personas.item, minlength=x.num_items)
    summary.update(
        {
            "items": int(x.num_items),
            "interactions": len(x),
            "personas": len(personas),
            "personas_per_item": {
                str(k): int(v)
                for k, v in zip(*np.unique(sizes, return_counts=True))
            },
            "sources": {
                str(k): int(v)
                for k, v in zip(
                    *np.unique(personas.source.astype(str), return_counts=True)
                )
            },
            "seconds": round(time.perf_counter() - start, 2),
        }
    )
    out = cfg.run_dir / "personas"
    with runs.staging_dir(out) as stage:
        runs.write_run_info(cfg, stage, dataset)
        lines = [
            json.dumps(r, ensure_ascii=False) for r in personas.records(dataset)
        ]
        runs.atomic_write_text(
            stage / generate.PERSONAS_FILE, "\n".join(lines) + "\n"
        )
        runs.write_json(stage / "summary.json", summary)
    logger.info(
        "personas=%d for items=%d -> %s",
        len(personas),
        x.num_items,
        out / generate.PERSONAS_FILE,
    )
    return summary


def evaluate_persona(cfg):
    """First stage alone vs first stage + persona rerank under leave-one-
    out: HR / MRR / NDCG at 5, 10, 20 with bootstrap CIs, overall and for
    cold/warm users and head/tail items, paired tests, and the rerank
    stage's latency per user; `<run>/persona_eval/metrics.{json,md}`."""
    persona_cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, name="persona")
    )
    dataset = data.load(cfg.data)
    train_, valid, test = data.split(
        dataset.interactions, "leave_last_out", seed=cfg.seed
    )
    rec = recommenders.build(persona_cfg, dataset)
    start = time.perf_counter()
    rec.fit(train_, valid)
    fit_valid = time.perf_counter() - start
    sweep = persona_eval.blend_sweep(
        rec, valid, train_, cfg.persona.blend_weight
    )
    train_valid = train_.concat(valid)
    rec_test = recommenders.build(persona_cfg, dataset)
    start = time.perf_counter()
    rec_test.fit(train_valid, None, **rec.refit_params())
    fit_test = time.perf_counter() - start
    views, latency = persona_eval.evaluate_reranker(
        rec_test, train_valid, test, cfg.eval.num_bootstrap, cfg.seed
    )
    report = {
        "protocol": "leave-one-out: per user, last interaction = test, the "
        "one before = valid; fit on train (select), refit on train+valid, "
        "rank all items with train+valid masked",
        "data": str(cfg.data.path),
        "first_stage": cfg.persona.first_stage,
        "encoder": cfg.persona.encoder,
        "generator": "file" if cfg.persona.personas_path else "data",
        "blend_weight": cfg.persona.blend_weight,
        "candidates": cfg.persona.candidates,
        "split": {"train": len(train_), "valid": len(valid), "test": len(test)},
        "encoder_epochs": rec.best_epoch,
        "fit_seconds": {"valid": fit_valid, "test": fit_test},
        "valid_blend_sweep": sweep,
        "views": views,
        "latency": latency,
        "backend": keras.backend.backend(),
    }
    markdown = persona_eval.format_report(report)
    out = cfg.run_dir / "persona_eval"
    with runs.staging_dir(out) as stage:
        runs.write_run_info(cfg, stage, dataset)
        runs.write_json(stage / "metrics.json", report)
        runs.atomic_write_text(stage / "metrics.md", markdown + "\n")
    print(markdown)
    return report
