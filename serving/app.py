"""HTTP recommendation API over a run's production model (FastAPI).

`python main.py serve` answers, with an OpenAPI schema at `/openapi.json`
and docs at `/docs`:

```
GET  /recommend/{user_id}?k=10&exclude_seen=true   top-K for a known user
POST /recommend  {"users": [...]}                  the same for a batch
POST /recommend  {"items": [...]}                  a user unseen in
                                                   training (fold-in)
GET  /similar/{item_id}?k=10                       nearest items
GET  /health, GET /version
```

The logic behind the routes is `serving/service.py`. Errors are JSON
`{"detail": ...}`: 404 for an unknown user or item id, 422 for a malformed
request (k out of range, wrong types, a body that is not JSON or holds NaN
or Infinity), 413 for a body over `serve.max_body_bytes`, 401 without the
API key when one is set (`serve.api_key` or `$RECSYS_API_KEY`), 429 over
the per-client rate limit (`serve.rate_limit`), and 500 without internals
for anything unexpected (logged with its traceback). An error never echoes
more than a short prefix of the request.
"""

import hmac
import json
import logging
import math
import os
import threading
import time

import fastapi
import pydantic
from fastapi import exceptions
from fastapi import responses

import config as config_lib
from serving.service import API_VERSION
from serving.service import UnknownIdError
from serving.service import config_from_run
from serving.service import load_service
from serving.service import shorten

logger = logging.getLogger(__name__)

API_KEY_ENV = "RECSYS_API_KEY"
API_KEY_HEADER = "x-api-key"
OPEN_PATHS = ("/health",)  # answered without the API key


class ScoredItem(pydantic.BaseModel):
    item: int | str = pydantic.Field(description="raw item id")
    score: float = pydantic.Field(description="higher is better")
    metadata: dict[str, str | int | float | None] = pydantic.Field(
        default_factory=dict, description="item feature file columns"
    )


class Recommendations(pydantic.BaseModel):
    user: int | str | None = pydantic.Field(
        description="raw user id; null for a fold-in user"
    )
    source: str = pydantic.Field(
        description="how the list was made: retrieval, retrieval+rerank "
        "or fold_in:<method>"
    )
    items: list[ScoredItem]


class BatchRecommendations(pydantic.BaseModel):
    results: list[Recommendations]


class SimilarItems(pydantic.BaseModel):
    item: int | str
    metadata: dict[str, str | int | float | None]
    items: list[ScoredItem]


class Health(pydantic.BaseModel):
    status: str
    users: int
    items: int


class Version(pydantic.BaseModel):
    api_version: str
    model: str
    config_hash: str
    backend: str = pydantic.Field(description="Keras backend serving")
    trained_backend: str | None
    run_dir: str
    retrieval: str
    reranker: str | None
    fold_in: str
    num_users: int
    num_items: int


class Error(pydantic.BaseModel):
    detail: str


def create_app(source) -> fastapi.FastAPI:
    """The FastAPI app over a run's production model.

    Args:
        source: a `config.Config` (serves `cfg.run_dir` with `cfg.serve`
            settings) or a run folder such as `runs/default` (served with
            the config saved there).
    """
    cfg = (
        source
        if isinstance(source, config_lib.Config)
        else config_from_run(source)
    )
    return build_app(load_service(cfg), cfg.serve)


def build_app(service, serve_cfg) -> fastapi.FastAPI:
    """Routes, request schemas (bounded by `serve.max_k` and
    `serve.max_batch`) and error handlers around a loaded service."""
    max_k, max_batch = serve_cfg.max_k, serve_cfg.max_batch

    class RecommendRequest(pydantic.BaseModel):
        """Exactly one of `users` (known users) or `items` (the recent
        items of a user unseen in training, oldest first)."""

        model_config = pydantic.ConfigDict(extra="forbid")
        users: list[pydantic.StrictInt | pydantic.StrictStr] | None = (
            pydantic.Field(None, min_length=1, max_length=max_batch)
        )
        items: list[pydantic.StrictInt | pydantic.StrictStr] | None = (
            pydantic.Field(None, min_length=1, max_length=max_batch)
        )
        k: pydantic.StrictInt = pydantic.Field(10, ge=1, le=max_k)
        exclude_seen: pydantic.StrictBool = True

        @pydantic.model_validator(mode="after")
        def _one_of(self):
            if (self.users is None) == (self.items is None):
                raise ValueError(
                    "give exactly one of `users` (known user ids) or "
                    "`items` (item ids of a new user)"
                )
            return self

    app = fastapi.FastAPI(
        title="recsys-keras recommendations",
        version=API_VERSION,
        description=__doc__.split("\n\n")[0],
    )
    app.state.service = service
    app.add_middleware(
        RequestGuard,
        max_body_bytes=serve_cfg.max_body_bytes,
        api_key=serve_cfg.api_key or os.environ.get(API_KEY_ENV) or None,
        rate_limit=serve_cfg.rate_limit,
        rate_burst=serve_cfg.rate_burst,
    )
    not_found = {404: {"model": Error, "description": "unknown id"}}
    k_query = fastapi.Query(10, ge=1, le=max_k, description="list length")

    @app.exception_handler(UnknownIdError)
    async def _unknown(request, exc):
        return responses.JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(exceptions.RequestValidationError)
    async def _invalid(request, exc):
        # FastAPI's own body repeats the whole input, which may be huge or
        # hold values JSON cannot encode (NaN): a short, safe summary.
        return responses.JSONResponse(
            {"detail": [_validation_error(e) for e in exc.errors()[:10]]},
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def _internal(request, exc):
        logger.exception("error serving %s", request.url.path)
        return responses.JSONResponse(
            {"detail": "internal server error"}, status_code=500
        )

    @app.get("/health", response_model=Health)
    def health():
        return {
            "status": "ok",
            "users": len(service.user_ids),
            "items": len(service.item_ids),
        }

    @app.get("/version", response_model=Version)
    def version():
        return service.version()

    @app.get(
        "/recommend/{user_id}",
        response_model=Recommendations,
        responses=not_found,
    )
    def recommend_user(
        user_id: str, k: int = k_query, exclude_seen: bool = True
    ):
        """Top-k items for a user known to the model."""
        user = service.user_index([user_id])
        items, scores, source = service.recommend_users(user, k, exclude_seen)
        return {
            "user": service.user_ids[user[0]],
            "source": source,
            "items": service.item_entries(items[0], scores[0]),
        }

    @app.post(
        "/recommend",
        response_model=BatchRecommendations,
        responses={
            **not_found,
            400: {"model": Error, "description": "body is not readable"},
        },
    )
    def recommend_batch(request: RecommendRequest):
        """Top-k for a batch of known users, or for one new user from the
        items they interacted with (fold-in)."""
        if request.items is not None:
            given = service.item_index(request.items)
            items, scores, source = service.recommend_history(
                given, request.k, request.exclude_seen
            )
            users = [None]
        else:
            index = service.user_index(request.users)
            items, scores, source = service.recommend_users(
                index, request.k, request.exclude_seen
            )
            users = [service.user_ids[u] for u in index]
        return {
            "results": [
                {
                    "user": user,
                    "source": source,
                    "items": service.item_entries(items[row], scores[row]),
                }
                for row, user in enumerate(users)
            ]
        }

    @app.get(
        "/similar/{item_id}", response_model=SimilarItems, responses=not_found
    )
    def similar(item_id: str, k: int = k_query):
        """The k items nearest to an item."""
        item = service.item_index([item_id])[0]
        items, scores = service.similar(item, k)
        return {
            "item": service.item_ids[item],
            "metadata": service.metadata[item] if service.metadata else {},
            "items": service.item_entries(items, scores),
        }

    return app


class RequestGuard:
    """ASGI middleware in front of every route: the body size limit, JSON
    that is valid and finite, the API key and a per-client rate limit.

    Args:
        app: the ASGI app it guards.
        max_body_bytes: larger bodies get 413 (read no further).
        api_key: required in the `X-API-Key` header (401 without it), or
            None for no authentication.
        rate_limit: requests per second each client (its IP address) may
            send on average; 0 = no limit. Over it: 429 with Retry-After.
        rate_burst: requests a client may send at once.
    """

    def __init__(
        self,
        app,
        max_body_bytes=1_000_000,
        api_key=None,
        rate_limit=0.0,
        rate_burst=20,
    ):
        self.app = app
        self.max_body_bytes = int(max_body_bytes)
        self.api_key = api_key
        self.rate_limit = float(rate_limit)
        self.rate_burst = int(rate_burst)
        self._buckets = {}  # client -> (tokens, last time)
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {
            k.decode().lower(): v.decode(errors="replace")
            for k, v in scope.get("headers", [])
        }
        if self.api_key and scope["path"] not in OPEN_PATHS:
            given = headers.get(API_KEY_HEADER, "")
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return await _reply(
                    send,
                    401,
                    f"missing or wrong API key (header {API_KEY_HEADER})",
                )
        if self.rate_limit > 0:
            wait = self._take((scope.get("client") or ("?",))[0])
            if wait > 0:
                return await _reply(
                    send,
                    429,
                    "too many requests: slow down",
                    {"retry-after": str(max(1, math.ceil(wait)))},
                )
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await _reply(send, 413, self._too_large())
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return await _reply(send, 413, self._too_large())
        if "json" in headers.get("content-type", "json"):
            problem = _json_problem(bytes(body))
            if problem:
                # The shape of FastAPI's own 422 answers (and the schema).
                detail = [
                    {"loc": ["body"], "msg": problem, "type": "json_invalid"}
                ]
                return await _reply(send, 422, detail)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {
                "type": "http.request",
                "body": bytes(body),
                "more_body": False,
            }

        return await self.app(scope, replay, send)

    def _too_large(self):
        return (
            f"request body over {self.max_body_bytes} bytes "
            "(serve.max_body_bytes)"
        )

    def _take(self, client):
        """Seconds to wait before `client` may send again (0 = now)."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.rate_burst, now))
            tokens = min(
                self.rate_burst, tokens + (now - last) * self.rate_limit
            )
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate_limit


def _json_problem(body):
    """Why `body` is no acceptable JSON (invalid, or a NaN / Infinity /
    overflowing number anywhere), or None."""
    if not body.strip():
        return None

    def constant(name):
        raise ValueError(f"non-finite number {name}")

    def number(text):
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"number out of range {shorten(text, 24)}")
        return value

    try:
        json.loads(body, parse_constant=constant, parse_float=number)
    except UnicodeDecodeError:
        return "request body is not UTF-8 text"
    except ValueError as e:
        return f"request body is not valid JSON: {shorten(e)}"
    return None


def _validation_error(error):
    """One pydantic error without its full input: location, message, type
    and a short prefix of the offending value."""
    out = {
        "loc": [shorten(part, 32) for part in error.get("loc", ())],
        "msg": shorten(error.get("msg", ""), 200),
        "type": error.get("type", ""),
    }
    if "input" in error:
        out["input"] = shorten(repr(error["input"]))
    return out


async def _reply(send, status, detail, headers=None):
    payload = json.dumps({"detail": detail}).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {"type": "http.response.start", "status": status, "headers": raw}
    )
    await send({"type": "http.response.body", "body": payload})
