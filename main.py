"""The toolkit's one command line: `python main.py ACTION [--set k=v ...]`.

Parses the action and config overrides, picks the Keras backend (before
Keras is imported), seeds everything once, and dispatches. Nothing else.
"""

import argparse
import logging
import os
import sys

import config as config_lib

ACTIONS = {
    "exploratory_data_analysis": "figures + JSON summary of the data",
    "train_validation_model": "fit on train, select on valid, report test",
    "train_production_model": "fit on all data with the selected epochs",
    "compute_predictions": "write recommendations.json for every user",
    "benchmark": "models vs baselines on a protocol (P1/P2), with CIs",
    "evaluate_cold_items": "rank held-out (never trained) items; cold start",
    "smoke": "seconds-long end-to-end run of the template actions",
}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="recsys-keras: recommender-system templates in Keras 3 "
        "(JAX, TensorFlow or PyTorch backend via KERAS_BACKEND).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="actions:\n"
        + "\n".join(f"  {name:<28}{doc}" for name, doc in ACTIONS.items())
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
    args = parser.parse_args(argv)
    if args.action not in ACTIONS:
        parser.error(
            f"unknown action {args.action!r}; valid actions: "
            + ", ".join(ACTIONS)
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

    import train

    keras.utils.set_random_seed(cfg.seed)
    logging.getLogger(__name__).info(
        "action=%s backend=%s model=%s",
        args.action,
        keras.backend.backend(),
        cfg.model.name,
    )
    try:
        getattr(train, args.action)(cfg)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
