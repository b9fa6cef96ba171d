"""Speed and memory of the template model on each Keras backend.

For every backend in `--backends`, the parent process starts a child process
(`KERAS_BACKEND` is read once, at `import keras`, so a process cannot switch
backend) that:

1. loads the data (`data.load(cfg.data)`: the shipped MovieLens files
   unless `--set data.*` says otherwise) and splits it with the configured
   split (protocol P1: per-user chronological by default);
2. builds `train.KerasRecommender` from `config.default()` plus `--set`
   overrides, and fits it on train for `--epochs` epochs without validation
   (`valid=None`, `verbose=0`), timing each epoch with a callback. Epoch 1
   includes tracing / XLA compilation (twice on JAX and TensorFlow: the
   last, partial batch has a new shape) and is reported on its own; "s/epoch"
   is the mean of the later epochs and examples/s is `len(train)` divided
   by it;
3. times `train.recommend` for every user with all interactions masked,
   top-10, 256 MB blocks: the work of `main.py compute_predictions`, minus
   loading the model and writing JSON. The first call (which compiles the
   predict function) is the one reported; a second, warm call is kept in
   the JSON;
4. reports the parameter count and the peak resident memory of the child
   (`getrusage(RUSAGE_SELF).ru_maxrss`: data, libraries and model together;
   `keras.utils.set_random_seed`, called as in main.py, imports TensorFlow
   when it is installed, whatever the backend), as one `RESULT {json}` line
   on stdout.

The parent prints a table and writes every figure, the command line, the
machine (cores, load average) and library versions to `--json-out`. The
children inherit the environment, so thread settings such as
`OMP_NUM_THREADS=1` (torch's intra-op pool) apply to every backend run.
Timings on a shared machine move with its load: compare runs by the load
averages recorded beside them.

Example:
    python benchmarks/template_speed.py
    python benchmarks/template_speed.py --backends jax,torch --epochs 5 \\
        --set train.batch_size=2048
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import config as config_lib  # noqa: E402

BACKENDS = ("jax", "tensorflow", "torch")
DEFAULT_JSON_OUT = ROOT / "benchmarks" / "results" / "template_speed.json"
RESULT_PREFIX = "RESULT "
PACKAGES = ("keras", "jax", "jaxlib", "tensorflow", "torch", "numpy")
TOP_K = 10
BUDGET_MB = 256
STDERR_TAIL_LINES = 15
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "MKL_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "XLA_FLAGS",
)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="template_speed.py",
        description="Per Keras backend: training time per epoch, "
        "examples/s, peak memory\nand the time to recommend for all users "
        "(compute_predictions) of the\ndefault template model; each backend "
        "runs in its own child process.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python benchmarks/template_speed.py "
        "--backends jax,torch \\\n      --set train.batch_size=2048",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated subset of %(default)s",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="epochs to fit, >= 2: the first (with compilation) is "
        "reported apart from the mean of the rest (default %(default)s)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override forwarded to every child, same syntax as "
        "main.py, e.g. --set train.batch_size=2048 (repeatable)",
    )
    parser.add_argument(
        "--json-out",
        type=pathlib.Path,
        default=DEFAULT_JSON_OUT,
        help="where to write all results (default: "
        "benchmarks/results/template_speed.json)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds allowed per backend (default %(default)s)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown or not args.backends:
        parser.error(
            f"`--backends` must be a comma-separated subset of "
            f"{','.join(BACKENDS)}. Received: {args.backends!r}"
        )
    if len(set(args.backends)) != len(args.backends):
        parser.error(
            f"`--backends` lists a backend twice. Received: {args.backends!r}"
        )
    if args.epochs < 2:
        parser.error(
            "`--epochs` must be >= 2 (epoch 1 includes compilation and is "
            f"reported apart). Received: {args.epochs}"
        )
    try:
        config_lib.override(config_lib.default(), args.overrides)
    except ValueError as e:
        parser.error(str(e))
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    return run_parent(args, argv)


# ---------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------


def run_parent(args, argv):
    command = shlex.join([sys.executable, sys.argv[0], *argv])
    machine = machine_info()
    print(f"command: {command}")
    print(
        f"machine: {machine['cpu_count']} cores "
        f"({machine['cpu_affinity']} usable), "
        f"load average {_fmt_load(machine['loadavg_start'])}, "
        f"{machine['platform']}"
    )
    print(
        "versions: "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    )
    if machine["git"]:
        print(
            f"git: {machine['git']['commit'][:12]}"
            + (" (working tree modified)" if machine["git"]["dirty"] else "")
        )
    if machine["thread_env"]:
        print(f"thread settings: {machine['thread_env']}")
    results = {}
    for backend in args.backends:
        print(f"running {backend} ...", flush=True)
        results[backend] = run_one(backend, args)
        r = results[backend]
        print(
            f"  {backend}: "
            + ("ok" if r["ok"] else "FAILED")
            + f" in {r['wall_s']:.1f}s",
            flush=True,
        )
    machine["loadavg_end"] = list(os.getloadavg())
    print()
    print(format_table(results))
    print()
    print(f"load average at end: {_fmt_load(machine['loadavg_end'])}")
    failed = [b for b, r in results.items() if not r["ok"]]
    for backend in failed:
        print(f"\n{backend} FAILED (exit {results[backend]['returncode']}):")
        print(results[backend]["stderr_tail"])
    payload = {
        "benchmark": "template_speed",
        "date": datetime.datetime.now().astimezone().isoformat(
            timespec="seconds"
        ),
        "command": command,
        "epochs": args.epochs,
        "overrides": args.overrides,
        "machine": machine,
        "results": results,
    }
    _atomic_write(args.json_out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json_out}")
    return 1 if failed else 0


def run_one(backend, args):
    """Run one child; return its RESULT dict plus `ok`, `wall_s`, ..."""
    cmd = [
        sys.executable,
        str(pathlib.Path(__file__).resolve()),
        "--child",
        "--backend",
        backend,
        "--epochs",
        str(args.epochs),
    ]
    for assignment in args.overrides:
        cmd += ["--set", assignment]
    env = dict(os.environ, KERAS_BACKEND=backend)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr or ""
        if isinstance(stderr, bytes):
            stderr = stderr.decode(errors="replace")
        return {
            "ok": False,
            "returncode": None,
            "wall_s": time.perf_counter() - start,
            "stderr_tail": f"timed out after {args.timeout}s\n"
            + _tail(stderr),
        }
    wall = time.perf_counter() - start
    lines = [
        line[len(RESULT_PREFIX) :]
        for line in proc.stdout.splitlines()
        if line.startswith(RESULT_PREFIX)
    ]
    if proc.returncode != 0 or len(lines) != 1:
        return {
            "ok": False,
            "returncode": proc.returncode,
            "wall_s": wall,
            "stderr_tail": _tail(proc.stderr or proc.stdout),
        }
    return {"ok": True, "returncode": 0, "wall_s": wall, **json.loads(lines[0])}


def format_table(results):
    """Markdown table, one row per backend; FAILED rows for failures."""
    head = (
        "| backend | first epoch s (compile) | s/epoch | examples/s "
        "| predict all users s | peak RSS MiB | params |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for backend, r in results.items():
        if not r["ok"]:
            lines.append(f"| {backend} | FAILED | | | | | |")
            continue
        lines.append(
            f"| {backend} | {r['first_epoch_s']:.2f} | {r['epoch_s']:.2f} "
            f"| {r['examples_per_s']:,.0f} | {r['predict_s']:.2f} "
            f"| {r['peak_rss_mib']:,.0f} | {r['params']:,} |"
        )
    return "\n".join(lines)


def machine_info():
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "loadavg_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        "git": _git_state(),
    }


# ---------------------------------------------------------------------------
# Child
# ---------------------------------------------------------------------------


def run_child(args):
    """Measure one backend in this process and print one RESULT line."""
    import resource

    if os.environ.get("KERAS_BACKEND") != args.backend:
        raise SystemExit(
            f"error: the child for `--backend {args.backend}` needs "
            f"KERAS_BACKEND={args.backend}. Received: "
            f"{os.environ.get('KERAS_BACKEND')!r}"
        )
    load_start = list(os.getloadavg())
    cfg = config_lib.override(
        config_lib.default(), args.overrides + ["train.verbose=0"]
    )

    import keras
    import numpy as np

    import data
    import train

    keras.utils.set_random_seed(cfg.seed)
    dataset = data.load(cfg.data)
    train_split, _, _ = data.split(
        dataset.interactions,
        cfg.data.split,
        cfg.data.valid_fraction,
        cfg.data.test_fraction,
        seed=cfg.seed,
    )
    rss_before_fit = _peak_rss_mib(resource)
    epoch_timer_cls, recommender_cls = _child_classes()
    timer = epoch_timer_cls()
    rec = recommender_cls(
        cfg.model,
        cfg.train,
        item_features=dataset.item_features,
        user_features=dataset.user_features,
        ks=cfg.eval.ks,
        memory_budget_mb=cfg.eval.memory_budget_mb,
        seed=cfg.seed,
        timer=timer,
    )
    rec.fit(train_split, None, epochs=args.epochs)
    if len(timer.seconds) != args.epochs:
        raise RuntimeError(
            f"Timed {len(timer.seconds)} epochs, expected {args.epochs}: "
            "`KerasRecommender.fit` no longer trains the model it compiles "
            "(see `TimedRecommender`)."
        )
    rest = timer.seconds[1:]
    epoch_s = float(np.mean(rest))

    users = np.arange(dataset.interactions.num_users)
    exclude = dataset.interactions.to_csr()
    predict_times = []
    for _ in range(2):
        rec._item_cache = None  # recompute item embeddings like a fresh load
        start = time.perf_counter()
        train.recommend(
            rec, users, exclude, k=TOP_K, budget_mb=BUDGET_MB, progress=False
        )
        predict_times.append(time.perf_counter() - start)

    result = {
        "backend": keras.backend.backend(),
        "keras": keras.version(),
        "threads": _backend_threads(keras.backend.backend()),
        "jit_compile": _jit_used(rec.model),
        "train_examples": len(train_split),
        "num_users": int(dataset.interactions.num_users),
        "num_items": int(dataset.interactions.num_items),
        "batch_size": cfg.train.batch_size,
        "steps_per_epoch": -(-len(train_split) // cfg.train.batch_size),
        "epochs": args.epochs,
        "epoch_seconds": timer.seconds,
        "first_epoch_s": timer.seconds[0],
        "epoch_s": epoch_s,
        "epoch_s_min": float(np.min(rest)),
        "examples_per_s": len(train_split) / epoch_s,
        "predict_s": predict_times[0],
        "predict_warm_s": predict_times[1],
        "params": int(rec.model.count_params()),
        "peak_rss_mib_before_fit": rss_before_fit,
        "peak_rss_mib": _peak_rss_mib(resource),
        "loadavg_start": load_start,
        "loadavg_end": list(os.getloadavg()),
        "final_loss": rec.fit_history.get("loss", [None])[-1],
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def _child_classes():
    """The Keras classes the child needs, defined once Keras is imported
    (the parent never imports Keras: it would load a backend)."""
    import keras

    import train

    class EpochTimer(keras.callbacks.Callback):
        """Wall time of each epoch, synchronised on the epoch's logs."""

        def __init__(self):
            super().__init__()
            self.seconds = []
            self._start = None

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            # float() waits for the device: JAX and torch dispatch
            # asynchronously, and the loss is the last thing computed.
            for value in (logs or {}).values():
                float(value)
            self.seconds.append(time.perf_counter() - self._start)

    class TimedRecommender(train.KerasRecommender):
        """`KerasRecommender` whose compiled models also run `timer` in
        `fit()`: `KerasRecommender.fit` makes its own callback list, and
        the benchmark must not change train.py. Hooked at `_compile`, the
        step every model that `fit()` trains goes through."""

        def __init__(self, *args, timer, **kwargs):
            super().__init__(*args, **kwargs)
            self.timer = timer

        def _compile(self, model, *args, **kwargs):
            super()._compile(model, *args, **kwargs)
            if getattr(model, "_timed_fit", False):
                return
            fit = model.fit
            timer = self.timer

            def fit_with_timer(*args, callbacks=None, **kwargs):
                callbacks = list(callbacks or []) + [timer]
                return fit(*args, callbacks=callbacks, **kwargs)

            model.fit = fit_with_timer
            model._timed_fit = True

    return EpochTimer, TimedRecommender


def _jit_used(model):
    return bool(getattr(model, "jit_compile", False))


def _backend_threads(backend):
    if backend == "torch":
        import torch

        return {
            "intra_op": torch.get_num_threads(),
            "inter_op": torch.get_num_interop_threads(),
        }
    if backend == "tensorflow":
        import tensorflow as tf

        return {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        }
    return {}


def _peak_rss_mib(resource):
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _atomic_write(path, text):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _git_state():
    """The commit measured, and whether the working tree differed from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def _tail(text, lines=STDERR_TAIL_LINES):
    return "\n".join(text.strip().splitlines()[-lines:])


def _fmt_load(loadavg):
    return "/".join(f"{x:.2f}" for x in loadavg) + " (1/5/15 min)"


if __name__ == "__main__":
    sys.exit(main())
