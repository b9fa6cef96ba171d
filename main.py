"""The toolkit's one command line: `python main.py ACTION [--set k=v ...]`.

Parses the action and config overrides, picks the Keras backend (before
Keras is imported), seeds everything once, and dispatches. Nothing else.
"""

import argparse
import dataclasses
import importlib
import logging
import os
import sys

import config as config_lib

@dataclasses.dataclass(frozen=True)
class Action:
    """One command of the dispatcher.

    target: "module:function"; the function is called as
        `function(cfg, **options)` with the action's own options.
    doc: one line for `--help`.
    options: `(flag, argparse kwargs)` pairs that only this action accepts,
        e.g. `("--user", {"help": "raw user id"})`; the keyword passed to the
        function is argparse's `dest` (e.g. `user`).
    """

    target: str
    doc: str
    options: tuple = ()


ACTIONS = {
    "exploratory_data_analysis": Action(
        "train:exploratory_data_analysis", "figures + JSON summary of the data"
    ),
    "train_validation_model": Action(
        "train:train_validation_model",
        "fit on train, select on valid, report test",
    ),
    "train_production_model": Action(
        "train:train_production_model",
        "fit on all data with the selected epochs",
    ),
    "compute_predictions": Action(
        "train:compute_predictions",
        "write recommendations.json for every user",
    ),
    "benchmark": Action(
        "train:benchmark", "models vs baselines on a protocol (P1/P2), with CIs"
    ),
    "evaluate_cold_items": Action(
        "train:evaluate_cold_items",
        "rank held-out (never trained) items; cold start",
    ),
    "smoke": Action(
        "train:smoke", "seconds-long end-to-end run of the template actions"
    ),
    "build_feature_cache": Action(
        "item_content:build_feature_cache",
        "encode item content (text, images) once into multimodal.cache_dir",
        (
            (
                "--rebuild",
                {
                    "action": "store_true",
                    "help": "build_feature_cache: recompute even if cached",
                },
            ),
            (
                "--clear",
                {
                    "action": "store_true",
                    "help": "build_feature_cache: delete the cached features",
                },
            ),
        ),
    ),
    "evaluate_cold_start": Action(
        "cold_start:evaluate_cold_start",
        "cold items: multimodal vs id-only vs content baselines + ablation",
        (
            (
                "--skip-ablation",
                {
                    "action": "store_true",
                    "help": "evaluate_cold_start: only the comparison table",
                },
            ),
        ),
    ),
    "build_personas": Action(
        "personas:build_personas",
        "item personas (data clusters or LLM) -> personas.jsonl",
        (
            (
                "--on",
                {
                    "choices": ["all", "train"],
                    "default": "all",
                    "help": "build_personas: from all interactions or the "
                    "training split only",
                },
            ),
        ),
    ),
    "evaluate_persona": Action(
        "personas:evaluate_persona",
        "leave-one-out: first stage vs persona rerank, segments, latency",
    ),
    "serve": Action(
        "serve:serve", "HTTP API (FastAPI) over the production model"
    ),
    "train_prior": Action(
        "diffusion.actions:train_prior",
        "fit the user-conditioned diffusion prior over item embeddings",
    ),
    "generate": Action(
        "diffusion.actions:generate",
        "new item embeddings a user should like (+ nearest items), JSON",
        (
            ("--user", {"help": "generate: raw user id to generate for"}),
            (
                "--n",
                {
                    "type": int,
                    "default": 8,
                    "help": "generate: embeddings to sample (default 8)",
                },
            ),
            (
                "--images",
                {
                    "action": "store_true",
                    "default": False,
                    "help": "generate: also decode the embeddings to a PNG "
                    "grid (decode.decoder) at each prior and image "
                    "guidance scale",
                },
            ),
        ),
    ),
    "evaluate_prior": Action(
        "diffusion.actions:evaluate_prior",
        "guidance sweep: NCF posterior check, retrieval, personalisation",
    ),
    "train_poster_decoder": Action(
        "diffusion.poster_autoencoder:train_poster_decoder",
        "offline poster autoencoder: embeddings + decoder, held-out MSE/SSIM",
    ),
    "train_sd_adapter": Action(
        "diffusion.decode:train_sd_adapter",
        "embedding -> Stable Diffusion context adapter (frozen KerasCV SD)",
    ),
}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="recsys-keras: recommender-system templates in Keras 3 "
        "(JAX, TensorFlow or PyTorch backend via KERAS_BACKEND).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="actions:\n"
        + "\n".join(f"  {name:<28}{a.doc}" for name, a in ACTIONS.items())
        + "\n\nexamples:\n"
        "  python main.py train_validation_model --set train.epochs=5\n"
        "  KERAS_BACKEND=torch python main.py train_validation_model "
        "--set model.name=ease",
    )
    parser.add_argument("action", metavar="ACTION", help="one of the actions")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.epochs=3 "
        "(repeatable; see config.py for every key)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(config_lib.PRESETS),
        default="default",
        help="starting configuration before overrides",
    )
    parser.add_argument("-q", "--quiet", action="store_true")
    owners = {}
    for name, action in ACTIONS.items():
        for flag, kwargs in action.options:
            if flag not in owners:
                kwargs = {"default": None, **kwargs}
                dest = parser.add_argument(flag, **kwargs).dest
                owners[flag] = (dest, kwargs["default"], [])
            owners[flag][2].append(name)
    args = parser.parse_args(argv)
    if args.action not in ACTIONS:
        parser.error(
            f"unknown action {args.action!r}; valid actions: "
            + ", ".join(ACTIONS)
        )
    args.options = {}
    for flag, (dest, default, names) in owners.items():
        value = getattr(args, dest)
        if args.action in names:
            args.options[dest] = value
        elif value != default:
            parser.error(
                f"{flag} belongs to {', '.join(names)}, not {args.action}"
            )
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        cfg = config_lib.override(
            config_lib.PRESETS[args.preset](), args.overrides
        )
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    os.environ.setdefault("KERAS_BACKEND", cfg.backend)

    import keras

    keras.utils.set_random_seed(cfg.seed)
    logging.getLogger(__name__).info(
        "action=%s backend=%s model=%s",
        args.action,
        keras.backend.backend(),
        cfg.model.name,
    )
    module, function = ACTIONS[args.action].target.split(":")
    run = getattr(importlib.import_module(module), function)
    try:
        run(cfg, **args.options)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
