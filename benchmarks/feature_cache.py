"""Feature stage of the multimodal model: cold cache vs warm cache.

Runs the feature stage that `model.name=multimodal` goes through before
fitting (join the item content, encode text with the frozen encoder, load
and resize the posters, assemble the item matrix) twice on the shipped
MovieLens catalog, into a fresh cache folder: the first run builds every
cache entry, the second reads them back memory-mapped. Prints both times
and their ratio, and writes `benchmarks/results/feature_cache.json`.

Usage (repository root):

    python -m benchmarks.feature_cache                  # MiniLM text
    python -m benchmarks.feature_cache --text-encoder hashed
"""

import os
import tempfile
import time

# Keras reads the backend once, at import (`data` and `content` import it).
os.environ.setdefault("KERAS_BACKEND", "jax")

import config
import data
from benchmarks import common
from content import items
from runtime import runs
from runtime import startup

SCRIPT = "feature_cache"


def feature_stage(cfg, item_ids):
    """One uncached-in-memory pass; returns (seconds, cache hits).

    The steps of `content.items.multimodal_item_features`, called one by
    one: that function keeps its last results in memory, and the second
    pass must read the cache on disk."""
    mm = cfg.multimodal
    start = time.perf_counter()
    content = items.load_item_content(
        item_ids,
        text_columns=mm.text_columns,
        numeric_columns=mm.numeric_columns,
        image_pattern=config.resolve_shared(mm.image_pattern),
        tables=items.content_tables(mm, cfg.data.item_features),
    )
    options = (
        {"sequence_length": mm.text_sequence_length}
        if mm.text_encoder == "minilm"
        else {"dim": mm.hashed_text_dim}
    )
    table = items.build_item_features(
        content,
        items.FeatureCache(mm.cache_dir),
        modalities=mm.modalities,
        text_encoder=mm.text_encoder,
        text_options=options,
        image_encoder=mm.image_encoder,
        image_size=mm.image_size,
        batch_size=mm.encode_batch_size,
    )
    return time.perf_counter() - start, table.stats["cache"]


def main(argv=None):
    parser = common.parser(SCRIPT, __doc__.splitlines()[0])
    parser.add_argument(
        "--text-encoder", default="minilm", choices=["minilm", "hashed"]
    )
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args(argv)
    startup.prepare()
    with tempfile.TemporaryDirectory(prefix="feature-cache-") as folder:
        cfg = config.override(
            config.Config(),
            [
                f"multimodal.text_encoder={args.text_encoder!r}",
                f"multimodal.image_size={args.image_size}",
                f"multimodal.cache_dir={folder!r}",
            ],
        )
        item_ids = data.load(cfg.data).item_ids
        cold, cold_hits = feature_stage(cfg, item_ids)
        warm, warm_hits = feature_stage(cfg, item_ids)
    result = {
        "items": int(len(item_ids)),
        "text_encoder": args.text_encoder,
        "image_size": args.image_size,
        "cold_seconds": round(cold, 2),
        "warm_seconds": round(warm, 2),
        "speedup": round(cold / warm, 1),
        "cold_cache": cold_hits,
        "warm_cache": warm_hits,
        "load_average": os.getloadavg(),
        "keras_backend": os.environ["KERAS_BACKEND"],
    }
    print(
        f"feature stage, {result['items']} items, text={args.text_encoder}: "
        f"cold cache {cold:.2f}s {cold_hits}, warm cache {warm:.2f}s "
        f"{warm_hits}: {cold / warm:.1f}x faster"
    )
    runs.write_json(common.default_json_out(SCRIPT), result)


if __name__ == "__main__":
    main()
