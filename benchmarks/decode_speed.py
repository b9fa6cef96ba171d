"""Decode time per image of both decoders of `diffusion/decode.py`, per
Keras backend.

For every backend in `--backends` a child process (a process cannot switch
backend) measures:

- `poster_decoder`: loads the trained poster model of the run
  (`python main.py train_poster_decoder` first; `--set output.run_name=...`
  picks the run), decodes `--poster-n` catalog embeddings once to warm up
  (tracing / compilation) and then again, timed: seconds per image.
- `stable_diffusion`: builds KerasCV's components with RANDOM weights
  (`download_weights=False`, no network needed) at `--sd-size` pixels,
  reporting build time and peak memory; decodes `--sd-n` embeddings with
  `--sd-steps` DDIM steps at guidance 7.5 (two denoiser passes per step)
  twice: the first call includes compilation, the second is the warm
  figure. Seconds per image and per denoising step are reported.

Each child prints one `RESULT {json}` line; the parent prints a table and
writes all figures, the command, the machine's cores and load averages to
`--json-out`. Timings on a shared machine are upper bounds.

Example:
    python -m benchmarks.decode_speed --set output.run_name=posters
    python -m benchmarks.decode_speed --backends jax --decoders stable_diffusion
"""

import logging
import os
import sys
import time

import config as config_lib

# Keras reads the backend once, at import. The parent's (it only parses
# options and starts children) is chosen as main.py does; each child's is
# set by its parent.
os.environ.setdefault(
    "KERAS_BACKEND", config_lib.backend_from_argv(sys.argv[1:])
)

import keras
import numpy as np

from benchmarks import common
from diffusion import actions
from diffusion import decode
from runtime import runs

SCRIPT = "decode_speed"
DECODERS = ("poster_decoder", "stable_diffusion")


def parse_args(argv):
    parser = common.parser(SCRIPT, __doc__.split("\n\n")[0])
    common.add_backends_option(parser)
    parser.add_argument(
        "--decoders",
        default=",".join(DECODERS),
        help="comma-separated subset of %(default)s",
    )
    parser.add_argument(
        "--poster-n",
        type=int,
        default=64,
        help="embeddings decoded by the poster decoder",
    )
    parser.add_argument(
        "--sd-size",
        type=int,
        default=64,
        help="Stable Diffusion pixels per side (x64)",
    )
    parser.add_argument(
        "--sd-n",
        type=int,
        default=1,
        help="embeddings decoded by Stable Diffusion",
    )
    parser.add_argument(
        "--sd-steps",
        type=int,
        default=2,
        help="DDIM steps per Stable Diffusion decode",
    )
    common.add_set_option(parser, "config override, as in main.py")
    common.add_json_out_option(parser, SCRIPT)
    common.add_timeout_option(parser, 3600.0)
    common.add_child_option(parser)
    args = parser.parse_args(argv)
    args.backends = common.parse_choices(
        parser, "--backends", args.backends, common.BACKENDS
    )
    args.decoders = common.parse_choices(
        parser, "--decoders", args.decoders, DECODERS
    )
    common.check_overrides(parser, args.overrides)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        common.print_result(measure(args))
        return 0
    command = common.command_line(SCRIPT, argv)
    machine = common.machine_info()
    common.print_header(command, machine)
    results = common.run_backends(
        SCRIPT, args.backends, ["--child", *argv], args.timeout
    )
    print()
    print(format_table(results))
    print()
    common.finish_machine(machine)
    failed = common.print_failures(results)
    payload = {
        "benchmark": SCRIPT,
        "date": common.now(),
        "command": command,
        "machine": machine,
        "results": results,
    }
    runs.write_json(args.json_out, payload)
    print(f"wrote {args.json_out}")
    return 1 if failed else 0


def measure(args):
    cfg = config_lib.override(config_lib.default(), args.overrides)
    common.start_child(cfg.seed)
    logging.basicConfig(level=logging.WARNING)
    out = {
        "backend": keras.backend.backend(),
        "load_average_start": os.getloadavg(),
    }
    decoders = args.decoders
    if "poster_decoder" in decoders:
        dec = actions.make_decoder(
            config_lib.override(cfg, ["decode.decoder=poster_decoder"])
        )
        _, emb = actions.poster_embeddings(cfg)
        emb = emb[: args.poster_n]
        start = time.perf_counter()
        dec.decode(emb)
        first = time.perf_counter() - start
        start = time.perf_counter()
        images = dec.decode(emb)
        warm = time.perf_counter() - start
        out["poster_decoder"] = {
            "images": len(images),
            "image_size": list(images.shape[1:3]),
            "first_call_s": round(first, 3),
            "s_per_image": round(warm / len(images), 5),
        }
    if "stable_diffusion" in decoders:
        start = time.perf_counter()
        parts = decode.load_stable_diffusion(
            args.sd_size, args.sd_size, "random"
        )
        build = time.perf_counter() - start
        base, uncond = decode.prompt_contexts(parts["text_encoder"])
        adapter = decode.EmbeddingAdapter(
            cfg.decode.embedding_dim, cfg.decode.num_context_tokens
        )
        sd = decode.StableDiffusionDecoder(
            adapter, parts["diffusion_model"], parts["decoder"], base, uncond
        )
        emb = (
            np.random.default_rng(0)
            .normal(size=(args.sd_n, cfg.decode.embedding_dim))
            .astype(np.float32)
        )
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            images = sd.decode(
                emb, seed=0, guidance_scale=7.5, steps=args.sd_steps
            )
            timings.append(time.perf_counter() - start)
        out["stable_diffusion"] = {
            "weights": "random",
            "image_size": list(images.shape[1:3]),
            "images": len(images),
            "steps": args.sd_steps,
            "guidance_scale": 7.5,
            "build_s": round(build, 1),
            "first_call_s": round(timings[0], 1),
            "s_per_image": round(timings[1] / len(images), 2),
            "s_per_step": round(timings[1] / args.sd_steps, 2),
            "params_m": round(
                sum(parts[k].count_params() for k in parts) / 1e6, 1
            ),
        }
    out["peak_rss_mb"] = round(common.peak_rss_mib())
    out["load_average_end"] = os.getloadavg()
    return out


def format_table(results):
    rows = [
        "| backend | poster s/image | SD build s | SD first call s | "
        "SD s/image | SD s/step | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, r in results.items():
        if not r.get("ok"):
            rows.append(
                f"| {backend} | failed (exit {r.get('returncode')}) | | | | | |"
            )
            continue
        p = r.get("poster_decoder", {})
        s = r.get("stable_diffusion", {})
        rows.append(
            f"| {backend} | {p.get('s_per_image', '')} | "
            f"{s.get('build_s', '')} | {s.get('first_call_s', '')} | "
            f"{s.get('s_per_image', '')} | {s.get('s_per_step', '')} | "
            f"{r.get('peak_rss_mb')} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
