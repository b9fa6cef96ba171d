"""Personas written by a language model: any OpenAI-compatible chat
endpoint rewrites each item's evidence (its data personas) into K personas,
with prompt templates from `persona.prompt_dir`, retries with backoff, a
client-side rate limit and an on-disk cache of responses keyed by the
prompt's hash, so an interrupted build resumes where it stopped.
"""

import hashlib
import json
import logging
import pathlib
import re
import string
import time

import keras
import numpy as np
import pandas as pd

from content.personas.generate import PersonaSet
from runtime import runs

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "persona_system.txt"
ITEM_PROMPT = "persona_item.txt"


class LLMError(RuntimeError):
    """The endpoint failed (after retries) or refused the request."""


class LLMResponseError(ValueError):
    """The endpoint answered, but not with the JSON that was asked for."""


class LLMClient:
    """A small client for an OpenAI-compatible `/chat/completions` API.

    Requests go one at a time, no faster than `requests_per_minute`.
    Network errors, timeouts, HTTP 429 and 5xx are retried up to `retries`
    times with exponential backoff (`backoff * 2**attempt` seconds, or the
    server's `Retry-After`, at most 60 s); other HTTP errors fail at once.
    Every answer that parses is cached as one JSON file per request under
    `cache_dir`, named by the SHA-256 of the request, written atomically:
    a crashed or interrupted build loses nothing, and a rerun sends only
    the requests it has no answer for.

    Args:
        endpoint: base URL, e.g. `http://127.0.0.1:8080/v1`.
        model: model name sent with each request.
        api_key: optional bearer token.
        timeout: float, seconds per request.
        retries: int >= 0.
        requests_per_minute: float > 0.
        cache_dir: optional folder for the response cache.
        temperature: float sent with each request.
        backoff: float, first retry delay in seconds.
    """

    def __init__(
        self,
        endpoint,
        model,
        api_key=None,
        timeout=60.0,
        retries=4,
        requests_per_minute=60.0,
        cache_dir=None,
        temperature=0.0,
        backoff=1.0,
    ):
        if not requests_per_minute > 0:
            raise ValueError(
                "`requests_per_minute` must be > 0. Received: "
                f"{requests_per_minute}"
            )
        if retries < 0:
            raise ValueError(f"`retries` must be >= 0. Received: {retries}")
        if not timeout > 0:
            raise ValueError(f"`timeout` must be > 0. Received: {timeout}")
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.interval = 60.0 / requests_per_minute
        self.cache_dir = None if cache_dir is None else pathlib.Path(cache_dir)
        self.temperature = temperature
        self.backoff = backoff
        self.requests = 0  # HTTP requests sent, retries included
        self.cache_hits = 0
        self._last = None

    def complete_json(self, system, user, validate=None):
        """The endpoint's answer to one chat, parsed as a JSON object.

        Args:
            system: str, system message.
            user: str, user message.
            validate: optional callable on the parsed object that raises
                `LLMResponseError` when it is not what was asked for.

        Returns:
            dict.

        Raises:
            LLMError: the request failed after the retries.
            LLMResponseError: the answer is not a JSON object (or fails
                `validate`); it is not cached.
        """
        payload = {
            "model": self.model,
            "temperature": self.temperature,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
        }
        key = hashlib.sha256(
            json.dumps(payload, sort_keys=True).encode()
        ).hexdigest()
        cached = self._cache_path(key)
        if cached is not None and cached.is_file():
            self.cache_hits += 1
            content = json.loads(cached.read_text("utf-8"))["content"]
            obj = parse_json_object(content)
            if validate is not None:
                validate(obj)
            return obj
        content = self._post(payload)
        obj = parse_json_object(content)
        if validate is not None:
            validate(obj)
        if cached is not None:
            runs.atomic_write_text(
                cached, json.dumps({"key": key, "content": content})
            )
        return obj

    def _cache_path(self, key):
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{key}.json"

    def _post(self, payload):
        import httpx  # the LLM generator only; not needed to rerank

        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        error = None
        with httpx.Client(timeout=self.timeout) as client:
            for attempt in range(self.retries + 1):
                if attempt:
                    time.sleep(self._delay(attempt, error))
                self._wait_turn()
                self.requests += 1
                try:
                    response = client.post(
                        self.url, json=payload, headers=headers
                    )
                except httpx.TransportError as e:  # connect, read, timeout
                    error = e
                    logger.warning(
                        "LLM request failed (%s); attempt %d/%d",
                        e,
                        attempt + 1,
                        self.retries + 1,
                    )
                    continue
                if response.status_code == 429 or response.status_code >= 500:
                    error = response
                    logger.warning(
                        "LLM endpoint answered HTTP %d; attempt %d/%d",
                        response.status_code,
                        attempt + 1,
                        self.retries + 1,
                    )
                    continue
                if response.status_code != 200:
                    raise LLMError(
                        f"{self.url} answered HTTP {response.status_code}: "
                        f"{response.text[:300]}"
                    )
                return _message_content(response, self.url)
        detail = (
            f"HTTP {error.status_code}"
            if hasattr(error, "status_code")
            else repr(error)
        )
        raise LLMError(
            f"{self.url} failed {self.retries + 1} times; last: {detail}"
        )

    def _delay(self, attempt, error):
        delay = self.backoff * 2 ** (attempt - 1)
        after = getattr(error, "headers", {}).get("retry-after")
        if after is not None:
            try:
                delay = max(delay, float(after))
            except ValueError:
                pass  # an HTTP date; the exponential delay stands
        return min(delay, 60.0)

    def _wait_turn(self):
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            time.sleep(self.interval - (now - self._last))
        self._last = time.monotonic()


def parse_json_object(content):
    """Parse an LLM answer that must be one JSON object (optionally inside
    a single ```json fence).

    Raises:
        LLMResponseError: with the start of the answer.
    """
    text = str(content).strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
    if fence:
        text = fence.group(1)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise LLMResponseError(
            f"LLM answer is not valid JSON ({e.msg} at char {e.pos}): "
            f"{str(content)[:200]!r}"
        ) from None
    if not isinstance(obj, dict):
        raise LLMResponseError(
            "LLM answer must be a JSON object. Received: "
            f"{type(obj).__name__} {str(content)[:200]!r}"
        )
    return obj


def persona_validator(num_personas):
    """A `validate` callable for `complete_json`: the answer must be
    `{"personas": [{"name": str, "description": str}, ...]}` with 1 to
    `num_personas` entries and non-empty strings."""

    def validate(obj):
        personas = obj.get("personas")
        if not isinstance(personas, list) or not (
            1 <= len(personas) <= num_personas
        ):
            raise LLMResponseError(
                f"`personas` must be a list of 1 to {num_personas} "
                f"objects. Received: {str(personas)[:200]}"
            )
        for i, entry in enumerate(personas):
            if not isinstance(entry, dict):
                raise LLMResponseError(
                    f"`personas[{i}]` must be an object. Received: {entry!r}"
                )
            for field in ("name", "description"):
                value = entry.get(field)
                if not isinstance(value, str) or not value.strip():
                    raise LLMResponseError(
                        f"`personas[{i}].{field}` must be a non-empty "
                        f"string. Received: {value!r}"
                    )

    return validate


def llm_personas(
    client,
    evidence,
    item_names,
    item_terms,
    item_counts,
    num_personas,
    prompt_dir,
    max_items=0,
):
    """Ask the LLM for the personas of each item, given its name, its top
    terms and its data personas as evidence; items beyond `max_items` (by
    popularity; 0 = all) and items whose answer fails keep their data
    personas.

    Returns:
        `(PersonaSet, summary)`: the personas, and counts of items asked,
        answered from cache, failed (with the first errors).
    """
    system_t, item_t = _templates(prompt_dir)
    system = _fill(
        system_t, prompt_dir / SYSTEM_PROMPT, num_personas=num_personas
    )
    validate = persona_validator(num_personas)
    order = np.argsort(-item_counts, kind="stable")
    if max_items:
        order = order[:max_items]
    by_item = pd.Series(np.arange(len(evidence))).groupby(evidence.item)
    groups = {int(k): v.to_numpy() for k, v in by_item}
    keep = np.ones(len(evidence), bool)
    new = {"item": [], "slot": [], "text": [], "source": [], "terms": []}
    failures = []
    bar = keras.utils.Progbar(len(order))
    for done, item in enumerate(order, 1):
        rows = groups.get(int(item), np.zeros(0, np.int64))
        audience = (
            "\n".join(
                f"- {evidence.text[r]} ({evidence.size[r]} users)" for r in rows
            )
            or "- (no one has interacted with it yet)"
        )
        prompt = _fill(
            item_t,
            prompt_dir / ITEM_PROMPT,
            num_personas=num_personas,
            item_name=item_names[item],
            item_terms=", ".join(t for t, _ in item_terms[item]) or "(none)",
            num_users=int(item_counts[item]),
            audience=audience,
        )
        try:
            answer = client.complete_json(system, prompt, validate)
        except (LLMError, LLMResponseError) as e:
            failures.append(f"item {item_names[item]}: {e}")
            logger.warning(
                "LLM personas of item %s failed: %s", item_names[item], e
            )
            bar.update(done)
            continue
        keep[rows] = False
        for slot, entry in enumerate(answer["personas"]):
            new["item"].append(int(item))
            new["slot"].append(slot)
            new["text"].append(
                f"{entry['name'].strip()}: {entry['description'].strip()}"
            )
            new["source"].append(f"llm:{client.model}")
            new["terms"].append(item_terms[item])
        bar.update(done)
    n = len(new["item"])
    kept = np.flatnonzero(keep)
    result = PersonaSet(
        item=np.concatenate(
            [evidence.item[kept], np.asarray(new["item"], np.int32)]
        ),
        slot=np.concatenate(
            [evidence.slot[kept], np.asarray(new["slot"], np.int64)]
        ),
        text=np.concatenate(
            [evidence.text[kept], np.asarray(new["text"], dtype=object)]
        ),
        size=np.concatenate([evidence.size[kept], np.zeros(n, np.int64)]),
        share=np.concatenate([evidence.share[kept], np.zeros(n)]),
        terms=[evidence.terms[i] for i in kept] + new["terms"],
        mean_rating=np.concatenate(
            [evidence.mean_rating[kept], np.full(n, np.nan)]
        ),
        usual_rating=np.concatenate(
            [evidence.usual_rating[kept], np.full(n, np.nan)]
        ),
        example_users=[evidence.example_users[i] for i in kept]
        + [[] for _ in range(n)],
        example_items=[evidence.example_items[i] for i in kept]
        + [[] for _ in range(n)],
        source=np.concatenate(
            [evidence.source[kept], np.asarray(new["source"], dtype=object)]
        ),
    )
    summary = {
        "items_asked": int(len(order)),
        "items_answered": int(len(order) - len(failures)),
        "items_failed": len(failures),
        "requests": client.requests,
        "cache_hits": client.cache_hits,
        "first_failures": failures[:10],
    }
    return result, summary


def _templates(prompt_dir):
    prompt_dir = pathlib.Path(prompt_dir)
    out = []
    for name in (SYSTEM_PROMPT, ITEM_PROMPT):
        path = prompt_dir / name
        if not path.is_file():
            raise FileNotFoundError(
                f"Prompt template not found: {path} (`persona.prompt_dir`)."
            )
        out.append(string.Template(path.read_text("utf-8")))
    return out


def _fill(template, path, **fields):
    try:
        return template.substitute(**fields)
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"{path}: the template uses an unknown or malformed field {e}; "
            f"available: {sorted(fields)}."
        ) from None


def _message_content(response, url):
    try:
        body = response.json()
        content = body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise LLMResponseError(
            f"{url} answered without `choices[0].message.content`: "
            f"{response.text[:200]!r}"
        ) from None
    if not isinstance(content, str):
        raise LLMResponseError(
            f"{url} answered with non-text content: {content!r}"
        )
    return content
