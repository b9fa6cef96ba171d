"""The toolkit's one command line: `python main.py ACTION [--set k=v ...]`.

Parses the action and config overrides, checks the config (before any data
is read), seeds everything once and calls the action, a function
`action(cfg, **options)` imported from the module of its concern.

Keras fixes its backend when it is first imported, so the backend
(`KERAS_BACKEND`, else the config's `backend`, which `--set backend=...`
may change) is chosen from the command line before the action modules,
which import Keras, are imported. Before all that, on Linux, the process
re-executes itself once with glibc's huge-page malloc switched on
(`runtime/malloc.py`: 1.5x faster SASRec steps on CPU).
"""

import argparse
import dataclasses
import logging
import os
import sys
from typing import Callable

if __name__ == "__main__":
    # Before anything heavy: glibc reads its malloc tunables at start-up.
    from runtime import malloc

    malloc.reexec_tuned()

import config as config_lib  # noqa: E402

os.environ.setdefault(
    "KERAS_BACKEND", config_lib.backend_from_argv(sys.argv[1:])
)
# TensorFlow's C++ start-up INFO lines (oneDNN, CUDA probing) are noise here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ["KERAS_BACKEND"] == "tensorflow":
    from runtime import quiet  # noqa: E402  (imports neither TF nor Keras)

    quiet.import_tensorflow()

# The action modules import Keras: only now that the backend is chosen.

import recommenders  # noqa: E402
import train  # noqa: E402
from content import actions as content_actions  # noqa: E402
from content.personas import actions as persona_actions  # noqa: E402
from diffusion import actions as diffusion_actions  # noqa: E402
from eval import actions as eval_actions  # noqa: E402
from runtime import seeding  # noqa: E402
from runtime import startup  # noqa: E402
from serving import actions as serving_actions  # noqa: E402

# Failures with a message meant for the user (bad data or config, a missing
# or damaged file, a full disk): one line, no traceback unless --debug.
KNOWN_FAILURES = (ValueError, OSError)


@dataclasses.dataclass(frozen=True)
class Action:
    """One command of the dispatcher.

    run: the function, called as `run(cfg, **options)` with the action's
        own options.
    doc: one line for `--help`.
    options: `(flag, argparse kwargs)` pairs that only this action accepts,
        e.g. `("--user", {"help": "raw user id"})`; the keyword passed to the
        function is argparse's `dest` (e.g. `user`).
    """

    run: Callable
    doc: str
    options: tuple = ()


ACTIONS = {
    "check_data": Action(
        train.check_data,
        "read the data as configured and report facts and warnings",
    ),
    "exploratory_data_analysis": Action(
        train.exploratory_data_analysis, "figures + JSON summary of the data"
    ),
    "train_validation_model": Action(
        train.train_validation_model,
        "fit on train, select on valid, report test",
    ),
    "train_production_model": Action(
        train.train_production_model,
        "fit on all data with the selected epochs",
    ),
    "compute_predictions": Action(
        train.compute_predictions,
        "write recommendations.json for every user",
    ),
    "benchmark": Action(
        eval_actions.benchmark,
        "models vs baselines on a protocol (P1/P2), with CIs",
    ),
    "tune": Action(
        eval_actions.tune,
        "search hyper-parameters on valid (Optuna); best -> a preset file",
    ),
    "evaluate_cold_items": Action(
        eval_actions.evaluate_cold_items,
        "rank held-out (never trained) items; cold start",
    ),
    "smoke": Action(
        train.smoke, "seconds-long end-to-end run of the template actions"
    ),
    "build_feature_cache": Action(
        content_actions.build_feature_cache,
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
        eval_actions.evaluate_cold_start,
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
        persona_actions.build_personas,
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
        persona_actions.evaluate_persona,
        "leave-one-out: first stage vs persona rerank, segments, latency",
    ),
    "serve": Action(
        serving_actions.serve, "HTTP API (FastAPI) over the production model"
    ),
    "train_prior": Action(
        diffusion_actions.train_prior,
        "fit the user-conditioned diffusion prior over item embeddings",
    ),
    "generate": Action(
        diffusion_actions.generate,
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
        diffusion_actions.evaluate_prior,
        "guidance sweep: NCF posterior check, retrieval, personalisation",
    ),
    "train_poster_decoder": Action(
        diffusion_actions.train_poster_decoder,
        "offline poster autoencoder: embeddings + decoder, held-out MSE/SSIM",
    ),
    "train_sd_adapter": Action(
        diffusion_actions.train_sd_adapter,
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
        default="default",
        help="starting configuration before overrides: "
        + ", ".join(sorted(config_lib.PRESETS))
        + ", or a preset .json file (e.g. the best.json `tune` writes)",
    )
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error instead of one line",
    )
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
            config_lib.load_preset(args.preset), args.overrides
        )
        recommenders.check_names(cfg)
    except ValueError as e:
        if args.debug:
            raise
        raise SystemExit(f"error: {e}") from None
    startup.prepare()
    seeding.set_seed(cfg.seed)
    logging.getLogger(__name__).info(
        "action=%s backend=%s model=%s",
        args.action,
        os.environ["KERAS_BACKEND"],
        cfg.model.name,
    )
    try:
        ACTIONS[args.action].run(cfg, **args.options)
    except KNOWN_FAILURES as e:
        if args.debug:
            raise
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
