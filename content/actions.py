"""The item-content action: `build_feature_cache` encodes the catalog's
item content (text, images) once into `multimodal.cache_dir`."""

import logging
import time

import data
from content import items
from runtime import runs

logger = logging.getLogger(__name__)


def build_feature_cache(cfg, rebuild=None, clear=None):
    """Encode the catalog's item content into `multimodal.cache_dir` (or
    `--clear` it, or `--rebuild` it), timing the feature stage; writes
    `feature_cache.json` into the run folder."""
    cache = items.FeatureCache(cfg.multimodal.cache_dir)
    if clear:
        removed = cache.clear()
        logger.info("cleared %d files from %s", removed, cache.folder)
        print(f"removed {removed} cache files from {cache.folder}")
        return {"removed": removed}
    dataset = data.load(cfg.data)
    start = time.perf_counter()
    features = items.multimodal_item_features(
        cfg.multimodal,
        cfg.data.item_features,
        dataset.item_ids,
        rebuild=bool(rebuild),
    )
    seconds = time.perf_counter() - start
    report = {
        "seconds": round(seconds, 3),
        "cache": features.stats["cache"],
        "coverage": features.stats["coverage"],
        "layout": features.stats["layout"],
        "cache_dir": str(cache.folder),
        "entries": [
            {k: e[k] for k in ("name", "arrays", "build_seconds")}
            for e in cache.entries()
        ],
    }
    runs.write_json(cfg.run_dir / "feature_cache.json", report)
    cov = report["coverage"]
    print(
        f"feature stage {seconds:.2f}s ({report['cache']}); items "
        f"{cov['items']}: text {cov['modalities']['text']}, image "
        f"{cov['modalities']['image']}, numeric "
        f"{cov['modalities']['numeric']}, none {cov['no_content']}"
    )
    return report
