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
    python benchmarks/decode_speed.py --set output.run_name=posters
    python benchmarks/decode_speed.py --backends jax --decoders stable_diffusion
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import config as config_lib  # noqa: E402

BACKENDS = ("jax", "tensorflow", "torch")
DECODERS = ("poster_decoder", "stable_diffusion")
DEFAULT_JSON_OUT = ROOT / "benchmarks" / "results" / "decode_speed.json"
RESULT_PREFIX = "RESULT "


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--decoders", default=",".join(DECODERS))
    parser.add_argument("--poster-n", type=int, default=64,
                        help="embeddings decoded by the poster decoder")
    parser.add_argument("--sd-size", type=int, default=64,
                        help="Stable Diffusion pixels per side (x64)")
    parser.add_argument("--sd-n", type=int, default=1,
                        help="embeddings decoded by Stable Diffusion")
    parser.add_argument("--sd-steps", type=int, default=2,
                        help="DDIM steps per Stable Diffusion decode")
    parser.add_argument("--set", dest="overrides", action="append",
                        default=[], metavar="KEY=VALUE",
                        help="config override, as in main.py")
    parser.add_argument("--json-out", type=pathlib.Path,
                        default=DEFAULT_JSON_OUT)
    parser.add_argument("--timeout", type=int, default=3600,
                        help="seconds per backend")
    parser.add_argument("--child", action="store_true",
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        print(RESULT_PREFIX + json.dumps(measure(args)), flush=True)
        return
    results = {}
    for backend in args.backends.split(","):
        print(f"--- {backend}", flush=True)
        results[backend] = run_child(backend, argv or sys.argv[1:],
                                     args.timeout)
    print(format_table(results))
    payload = {
        "command": "python benchmarks/decode_speed.py "
        + " ".join(argv or sys.argv[1:]),
        "cpus": os.cpu_count(),
        "load_average_end": os.getloadavg(),
        "results": results,
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(payload, indent=2))
    print(f"written to {args.json_out}")


def run_child(backend, argv, timeout):
    env = {**os.environ, "KERAS_BACKEND": backend}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *argv],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )
    lines = [ln for ln in proc.stdout.splitlines()
             if ln.startswith(RESULT_PREFIX)]
    if proc.returncode or not lines:
        return {"ok": False, "returncode": proc.returncode,
                "stderr_tail": proc.stderr[-3000:]}
    return {"ok": True, "wall_s": round(time.perf_counter() - start, 1),
            **json.loads(lines[-1][len(RESULT_PREFIX):])}


def measure(args):
    import logging

    import keras
    import numpy as np

    logging.basicConfig(level=logging.WARNING)
    cfg = config_lib.override(config_lib.default(), args.overrides)
    keras.utils.set_random_seed(cfg.seed)
    out = {"backend": keras.backend.backend(),
           "load_average_start": os.getloadavg()}
    decoders = args.decoders.split(",")
    if "poster_decoder" in decoders:
        from diffusion import decode
        from diffusion import poster_autoencoder

        dec = decode.make_decoder(config_lib.override(
            cfg, ["decode.decoder=poster_decoder"]))
        _, emb = poster_autoencoder.poster_embeddings(cfg)
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
        from diffusion import decode

        start = time.perf_counter()
        parts = decode.load_stable_diffusion(args.sd_size, args.sd_size,
                                             "random")
        build = time.perf_counter() - start
        base, uncond = decode.prompt_contexts(parts["text_encoder"])
        adapter = decode.EmbeddingAdapter(cfg.decode.embedding_dim,
                                          cfg.decode.num_context_tokens)
        sd = decode.StableDiffusionDecoder(
            adapter, parts["diffusion_model"], parts["decoder"], base, uncond
        )
        emb = np.random.default_rng(0).normal(
            size=(args.sd_n, cfg.decode.embedding_dim)).astype(np.float32)
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            images = sd.decode(emb, seed=0, guidance_scale=7.5,
                               steps=args.sd_steps)
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
            "params_m": round(sum(
                parts[k].count_params() for k in parts) / 1e6, 1),
        }
    out["peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["load_average_end"] = os.getloadavg()
    return out


def format_table(results):
    rows = ["| backend | poster s/image | SD build s | SD first call s | "
            "SD s/image | SD s/step | peak RSS MB |",
            "|---|---|---|---|---|---|---|"]
    for backend, r in results.items():
        if not r.get("ok"):
            rows.append(f"| {backend} | failed (exit {r.get('returncode')}) "
                        "| | | | | |")
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
    main()
