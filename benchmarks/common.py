"""What the benchmark scripts share: options, child processes, the machine
description, timing callbacks.

The scripts run as modules from the repository root
(`python -m benchmarks.template_speed ...`). Most measure one Keras backend
per child process, because `KERAS_BACKEND` is read once, at `import keras`:
the parent parses and checks the options (`parser`, `parse_choices`,
`check_overrides`), starts one child of its own module per backend or
setting (`run_child`: `KERAS_BACKEND` set, a timeout, the child's one
`RESULT {json}` line parsed, the tail of its output kept on failure),
describes the machine (`machine_info`, `print_header`) and writes every
figure to a JSON file (`runtime.runs.write_json`). A child starts with
`start_child`, times `fit()` with `EpochTimer` through `time_fit`, and ends
with `print_result`.

A script chooses the parent's backend before its imports (as main.py
does, `KERAS_BACKEND` else the config's `backend`): the parent imports Keras
too, but only parses options and starts children, which get their own.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import resource
import shlex
import subprocess
import sys
import time

import keras

import config as config_lib
from runtime import malloc
from runtime import seeding
from runtime import startup

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"  # git-ignored
BACKENDS = ("jax", "tensorflow", "torch")
RESULT_PREFIX = "RESULT "
TAIL_LINES = 20
PACKAGES = ("keras", "jax", "jaxlib", "tensorflow", "torch", "numpy")
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "MKL_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "XLA_FLAGS",
    "GLIBC_TUNABLES",
)

# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


def module_command(script):
    """`python -m benchmarks.<script>`, as the scripts are run."""
    return f"python -m benchmarks.{script}"


def parser(script, description, epilog=None):
    """An `ArgumentParser` named after the module command, with the
    description and epilog printed as written."""
    return argparse.ArgumentParser(
        prog=module_command(script),
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_backends_option(parser, default=BACKENDS):
    """`--backends`: a comma-separated subset of `BACKENDS`; check it with
    `parse_choices(parser, "--backends", args.backends, BACKENDS)`."""
    parser.add_argument(
        "--backends",
        default=",".join(default),
        help="comma-separated subset of %(default)s",
    )


def parse_choices(parser, option, text, choices):
    """`text` (`"a,b"`) as a list, order kept; a `parser.error` when it is
    empty, names something outside `choices` or names a choice twice."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in choices]
    if unknown or not values:
        parser.error(
            f"`{option}` must be a comma-separated subset of "
            f"{','.join(choices)}. Received: {text!r}"
        )
    if len(set(values)) != len(values):
        parser.error(f"`{option}` names a value twice. Received: {text!r}")
    return values


def add_set_option(parser, help):
    """`--set KEY=VALUE` (repeatable) into `args.overrides`; check it with
    `check_overrides`."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=help,
    )


def check_overrides(parser, overrides):
    """A `parser.error` (naming the key) unless `config.override` accepts
    `overrides` on the default config."""
    try:
        config_lib.override(config_lib.default(), overrides)
    except ValueError as e:
        parser.error(str(e))


def add_json_out_option(parser, script):
    """`--json-out`, by default `benchmarks/results/<script>.json`."""
    parser.add_argument(
        "--json-out",
        type=pathlib.Path,
        default=default_json_out(script),
        help="where to write all results (default: "
        f"benchmarks/results/{script}.json)",
    )


def default_json_out(script):
    return RESULTS_DIR / f"{script}.json"


def add_timeout_option(parser, default, per="backend"):
    parser.add_argument(
        "--timeout",
        type=float,
        default=default,
        help=f"seconds allowed per {per} (default %(default)s)",
    )


def add_child_option(parser):
    """The hidden `--child` flag a parent passes to its children."""
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def set_args(overrides):
    """`["--set", a, "--set", b, ...]`: overrides forwarded to a child."""
    return [arg for item in overrides for arg in ("--set", item)]


# ---------------------------------------------------------------------------
# Parent: child processes
# ---------------------------------------------------------------------------


def run_child(script, args, backend, timeout, env=None):
    """Run `python -m benchmarks.<script> *args` from the repository root
    with `KERAS_BACKEND=backend` (and the variables of `env`); the child
    must print exactly one `RESULT {json}` line on stdout and exit 0.

    Returns:
        dict: `ok`, `returncode` (None on timeout), `wall_s`, and either
        the child's result fields or `stderr_tail` (the last lines of its
        stderr, else of its stdout).
    """
    cmd = [sys.executable, "-m", f"benchmarks.{script}", *args]
    env = dict(os.environ, **(env or {}), KERAS_BACKEND=backend)
    env = malloc.tuned_environ(env) or env  # as main.py runs
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        output = e.stderr or e.stdout or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        return {
            "ok": False,
            "returncode": None,
            "wall_s": time.perf_counter() - start,
            "stderr_tail": f"timed out after {timeout}s\n" + tail(output),
        }
    wall = time.perf_counter() - start
    lines = [
        line[len(RESULT_PREFIX) :]
        for line in proc.stdout.splitlines()
        if line.startswith(RESULT_PREFIX)
    ]
    if proc.returncode != 0 or len(lines) != 1:
        text = tail(proc.stderr or proc.stdout)
        if proc.returncode == 0:
            text += f"\n(printed {len(lines)} RESULT lines, expected 1)"
        return {
            "ok": False,
            "returncode": proc.returncode,
            "wall_s": wall,
            "stderr_tail": text,
        }
    return {"ok": True, "returncode": 0, "wall_s": wall, **json.loads(lines[0])}


def run_backends(script, backends, args, timeout):
    """`run_child` once per backend, in order, with a line of progress
    before and after each; returns `{backend: result}`."""
    results = {}
    for backend in backends:
        print(f"running {backend} ...", flush=True)
        r = results[backend] = run_child(script, args, backend, timeout)
        print(
            f"  {backend}: {'ok' if r['ok'] else 'FAILED'} "
            f"in {r['wall_s']:.1f}s",
            flush=True,
        )
    return results


def print_failures(results):
    """For each failed result (`{name: result}`), its exit status and the
    tail of its output."""
    failed = [name for name, r in results.items() if not r["ok"]]
    for name in failed:
        print(f"\n{name} FAILED (exit {results[name]['returncode']}):")
        print(results[name]["stderr_tail"])
    return failed


def tail(text, lines=TAIL_LINES):
    return "\n".join(text.strip().splitlines()[-lines:])


# ---------------------------------------------------------------------------
# Parent: machine, command, results file
# ---------------------------------------------------------------------------


def command_line(script, argv):
    """The command that ran this benchmark, runnable from the root."""
    return shlex.join([sys.executable, "-m", f"benchmarks.{script}", *argv])


def machine_info():
    """Cores, load average, platform, library versions, thread settings
    and git state: what a timing depends on besides the code."""
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
        "git": git_state(),
    }


def print_header(command, machine):
    """The command, the machine and the versions, printed before a run."""
    print(f"command: {command}")
    print(
        f"machine: {machine['cpu_count']} cores "
        f"({machine['cpu_affinity']} usable), "
        f"load average {fmt_load(machine['loadavg_start'])}, "
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


def finish_machine(machine):
    """Record the load average at the end in `machine` and print it."""
    machine["loadavg_end"] = list(os.getloadavg())
    print(f"load average at end: {fmt_load(machine['loadavg_end'])}")
    return machine


def git_state():
    """The commit measured, and whether the working tree differed from it."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def fmt_load(loadavg):
    return "/".join(f"{x:.2f}" for x in loadavg) + " (1/5/15 min)"


def now():
    """Local date and time with its UTC offset, to the second."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def peak_rss_mib():
    """Peak resident memory of this process, MiB (`ru_maxrss` is KiB on
    Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------
# Child
# ---------------------------------------------------------------------------


def start_child(seed):
    """Start-up of a child that measures Keras: check that its parent set
    the backend, `runtime.startup.prepare()`, then `runtime.seeding.
    set_seed(seed)` (which, unlike `keras.utils.set_random_seed`, does not
    import TensorFlow under JAX or torch)."""
    expected = os.environ.get("KERAS_BACKEND")
    if keras.backend.backend() != expected:
        raise SystemExit(
            "error: a benchmark child needs KERAS_BACKEND set by its "
            f"parent. Received: {expected!r}, Keras runs "
            f"{keras.backend.backend()!r}"
        )
    startup.prepare()
    seeding.set_seed(seed)


def print_result(result):
    """The child's one `RESULT {json}` line, which `run_child` reads."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


class EpochTimer(keras.callbacks.Callback):
    """`.seconds`: the wall time of each epoch, synchronised on the epoch's
    logs."""

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


def time_fit(rec, callback, **fit_kwargs):
    """Make the `fit()` of `rec` (a `KerasRecommender`) also run
    `callback`, with `fit_kwargs` (e.g. `steps_per_epoch`) added to the
    model's `fit`. `KerasRecommender.fit` makes its own callback list, so
    this hooks `_compile`, the step every model it trains goes through.
    """
    if not hasattr(rec, "_compile"):
        raise ValueError(
            "The benchmark times a Keras model family (`model.name` "
            f"two_tower, ncf or multimodal). Received: {type(rec).__name__}"
        )
    compile_ = rec._compile

    def compile_with_callback(model, *args, **kwargs):
        compile_(model, *args, **kwargs)
        if getattr(model, "_benchmark_fit", False):
            return
        fit = model.fit

        def fit_with_callback(*args, callbacks=None, **kwargs):
            kwargs.update(fit_kwargs)
            callbacks = list(callbacks or []) + [callback]
            return fit(*args, callbacks=callbacks, **kwargs)

        model.fit = fit_with_callback
        model._benchmark_fit = True

    rec._compile = compile_with_callback


def backend_threads(backend):
    """The intra- and inter-op thread pools of torch or TensorFlow."""
    if backend == "torch":
        import torch  # the backend's own package, loaded by Keras already

        return {
            "intra_op": torch.get_num_threads(),
            "inter_op": torch.get_num_interop_threads(),
        }
    if backend == "tensorflow":
        import tensorflow as tf  # the backend's own package, as above

        return {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        }
    return {}


def _git(*args):
    return subprocess.run(
        ["git", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
