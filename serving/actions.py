"""The serving action: `python main.py serve`."""

import logging

import threadpoolctl
import uvicorn

from serving.app import create_app

logger = logging.getLogger(__name__)


def serve(cfg):
    """Serve `cfg.run_dir`'s production model over HTTP with uvicorn on
    `serve.host`:`serve.port` until interrupted. Uvicorn logs at the root
    logger's level, so `main.py -q` also silences the access log."""
    # Requests run in parallel threads; a multi-threaded BLAS under each
    # one oversubscribes the cores (its threads spin-wait): one BLAS
    # thread per request was 10x faster for single-user requests here.
    threadpoolctl.threadpool_limits(1, user_api="blas")
    app = create_app(cfg)
    logger.info(
        "listening on http://%s:%d (API docs at /docs)",
        cfg.serve.host,
        cfg.serve.port,
    )
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    uvicorn.run(
        app,
        host=cfg.serve.host,
        port=cfg.serve.port,
        log_level=level.lower(),
    )
