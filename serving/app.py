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
request (k out of range, wrong types, bad body), 500 without internals for
anything unexpected (logged with its traceback).
"""

import logging

import fastapi
import pydantic
from fastapi import responses

import config as config_lib
from serving.service import API_VERSION
from serving.service import UnknownIdError
from serving.service import config_from_run
from serving.service import load_service

logger = logging.getLogger(__name__)


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
    not_found = {404: {"model": Error, "description": "unknown id"}}
    k_query = fastapi.Query(10, ge=1, le=max_k, description="list length")

    @app.exception_handler(UnknownIdError)
    async def _unknown(request, exc):
        return responses.JSONResponse({"detail": str(exc)}, status_code=404)

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
