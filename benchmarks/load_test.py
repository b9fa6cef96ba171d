"""Load test of the HTTP service on loopback: latency percentiles and
throughput of `/recommend`.

Starts `python main.py -q serve` (with the given `--set` overrides) on a
free loopback port as a child process, or targets a running server with
`--url`, waits for `GET /health`, then runs each scenario: `--warmup`
untimed requests, then `--requests` timed ones with `--concurrency`
requests in flight at a time (that many httpx.AsyncClient workers over
keep-alive connections, each sending its next request as soon as the last
one is answered):

- `single`:  GET /recommend/{user}?k=K for a random known user;
- `batch`:   POST /recommend {"users": [B random users], "k": K};
- `fold_in`: POST /recommend {"items": [H random items], "k": K} (a user
  unseen in training).

Latency is client side, from sending the request to having the whole
body. The script reports p50/p95/p99/max latency in ms, requests/s and
users/s (throughput over the timed wall-clock window) and the number of
non-200 answers, as a Markdown table and as JSON (`--json-out`) with the
command line, the server's `/version`, core count and load averages. The
client and the server share the machine: on a small or busy machine the
figures are upper bounds for the server alone.

Example:
    python -m benchmarks.load_test --concurrency 8 --requests 2000
    python -m benchmarks.load_test --url http://127.0.0.1:8000 \\
        --scenarios single
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np

import config as config_lib

# `benchmarks.common` imports Keras, which reads the backend once, at
# import: choose it as main.py does (never keras.json's). The client runs
# no model; the server picks its own backend.
os.environ.setdefault(
    "KERAS_BACKEND", config_lib.backend_from_argv(sys.argv[1:])
)

from benchmarks import common
from runtime import runs

SCRIPT = "load_test"
SCENARIOS = ("single", "batch", "fold_in")
SERVER_LOG = common.RESULTS_DIR / "load_test_server.log"


def parse_args(argv):
    parser = common.parser(
        SCRIPT,
        "p50/p95/p99 latency and throughput of the recommendation "
        "service on loopback.",
    )
    parser.add_argument("--url", help="target this running server instead")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--requests", type=int, default=1000, help="timed requests per scenario"
    )
    parser.add_argument(
        "--warmup", type=int, default=50, help="untimed requests per scenario"
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--batch-size", type=int, default=32, help="users per batch request"
    )
    parser.add_argument(
        "--history", type=int, default=20, help="items per fold-in request"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated subset of %(default)s",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the server's /health",
    )
    common.add_set_option(
        parser,
        "config override for the server (repeatable); "
        "also picks the run whose ids are sampled",
    )
    common.add_json_out_option(parser, SCRIPT)
    args = parser.parse_args(argv)
    args.scenarios = common.parse_choices(
        parser, "--scenarios", args.scenarios, SCENARIOS
    )
    for name in ("concurrency", "requests", "k", "batch_size", "history"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    common.check_overrides(parser, args.overrides)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = common.command_line(SCRIPT, argv)
    machine = common.machine_info()
    common.print_header(command, machine)
    cfg = config_lib.override(config_lib.default(), args.overrides)
    encoders_path = cfg.run_dir / "production" / "encoders.json"
    if not encoders_path.is_file():
        raise SystemExit(
            f"error: {encoders_path} not found: train the production model "
            "first (python main.py train_validation_model, then "
            "train_production_model), with the same --set options."
        )
    encoders = json.loads(encoders_path.read_text())
    server, log_path = None, None
    url = args.url
    if url is None:
        url, server, log_path = start_server(args.overrides)
    try:
        wait_healthy(url, args.startup_timeout, server, log_path)
        version = httpx.get(f"{url}/version", timeout=30).json()
        load_before = os.getloadavg()
        results = asyncio.run(
            run_scenarios(url, args, encoders["user_ids"], encoders["item_ids"])
        )
        load_after = os.getloadavg()
    finally:
        if server is not None:
            stop_server(server)
    report = {
        "benchmark": SCRIPT,
        "date": common.now(),
        "command": command,
        "url": url,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "k": args.k,
        "batch_size": args.batch_size,
        "history": args.history,
        "server": version,
        "cpu_count": os.cpu_count(),
        "machine": machine,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "scenarios": results,
    }
    print(format_table(report))
    runs.write_json(args.json_out, report)
    print(f"\nJSON -> {args.json_out}")
    return report


async def run_scenarios(url, args, user_ids, item_ids):
    rng = np.random.default_rng(args.seed)
    limits = httpx.Limits(
        max_connections=args.concurrency,
        max_keepalive_connections=args.concurrency,
    )
    results = {}
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=60.0
    ) as client:
        for name in args.scenarios:
            make = request_maker(name, args, user_ids, item_ids, rng)
            await drive(client, make, args.warmup, args.concurrency)
            latencies, errors, wall = await drive(
                client, make, args.requests, args.concurrency
            )
            per_request = args.batch_size if name == "batch" else 1
            results[name] = summarise(latencies, errors, wall, per_request)
    return results


def request_maker(name, args, user_ids, item_ids, rng):
    """A function returning the next `(method, path, json_body)`."""
    k = args.k

    def single():
        user = user_ids[rng.integers(len(user_ids))]
        return "GET", f"/recommend/{user}?k={k}", None

    def batch():
        picked = rng.choice(len(user_ids), args.batch_size, replace=False)
        return (
            "POST",
            "/recommend",
            {
                "users": [user_ids[i] for i in picked],
                "k": k,
            },
        )

    def fold_in():
        picked = rng.choice(len(item_ids), args.history, replace=False)
        return (
            "POST",
            "/recommend",
            {
                "items": [item_ids[i] for i in picked],
                "k": k,
            },
        )

    return {"single": single, "batch": batch, "fold_in": fold_in}[name]


async def drive(client, make, total, concurrency):
    """Send `total` requests from `concurrency` workers; returns the
    latencies (s) of the 200 answers, the count of others, and the wall
    time."""
    latencies, errors = [], [0]
    remaining = [total]

    async def worker():
        while remaining[0] > 0:
            remaining[0] -= 1
            method, path, body = make()
            start = time.perf_counter()
            try:
                response = await client.request(method, path, json=body)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors[0] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors[0], time.perf_counter() - start


def summarise(latencies, errors, wall, users_per_request):
    ms = np.asarray(latencies) * 1000.0
    done = len(ms)
    pct = (
        np.percentile(ms, [50, 95, 99]).tolist() if done else [float("nan")] * 3
    )
    return {
        "ok": done,
        "errors": errors,
        "p50_ms": round(pct[0], 2),
        "p95_ms": round(pct[1], 2),
        "p99_ms": round(pct[2], 2),
        "max_ms": round(float(ms.max()), 2) if done else float("nan"),
        "requests_per_s": round(done / wall, 1),
        "users_per_s": round(done * users_per_request / wall, 1),
        "wall_s": round(wall, 2),
    }


def format_table(report):
    lines = [
        f"server: {report['server'].get('model')} "
        f"(retrieval {report['server'].get('retrieval')}, reranker "
        f"{report['server'].get('reranker')}, backend "
        f"{report['server'].get('backend')}); concurrency "
        f"{report['concurrency']}, k={report['k']}, "
        f"{report['requests']} timed requests per scenario; "
        f"{report['cpu_count']} cores, load "
        f"{report['loadavg_before'][0]:.2f} -> "
        f"{report['loadavg_after'][0]:.2f}",
        "",
        "| scenario | p50 ms | p95 ms | p99 ms | max ms | req/s | users/s "
        "| errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {
        "single": "GET /recommend/{user}",
        "batch": f"POST /recommend ({report['batch_size']} users)",
        "fold_in": f"POST /recommend fold-in ({report['history']} items)",
    }
    for name, r in report["scenarios"].items():
        lines.append(
            f"| {labels[name]} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
            f"{r['requests_per_s']:.1f} | {r['users_per_s']:.1f} | "
            f"{r['errors']} |"
        )
    return "\n".join(lines)


def start_server(overrides):
    """`python main.py -q serve` on a free loopback port; its output goes
    to a log file under benchmarks/results/."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = SERVER_LOG
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(common.ROOT / "main.py"), "-q", "serve"]
    for item in overrides:
        command += ["--set", item]
    command += [
        "--set",
        "serve.host='127.0.0.1'",
        "--set",
        f"serve.port={port}",
    ]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, cwd=common.ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    print(f"started server pid={server.pid} port={port} (log: {log_path})")
    return f"http://127.0.0.1:{port}", server, log_path


def wait_healthy(url, timeout, server=None, log_path=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise SystemExit(f"error: the server exited:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: {url}/health did not answer in {timeout:.0f}s")


def stop_server(server):
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
