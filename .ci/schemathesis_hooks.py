"""schemathesis hooks for `.ci/schemathesis`: the few rules of the API that no JSON Schema can
state, applied to each generated request just before it is sent.

Every edit here turns a value the spec calls valid into another valid one, so a positive case
stays positive and a negative case stays negative (schemathesis re-checks the edited case
against the spec). Values the spec calls invalid are never touched, so negative testing of
these parameters still reaches the server as generated.

1. Holds. `GET /v1/poll?timeout=`, `GET /v1/jobs/{id}?wait=` and the claim's `wait_ms` may hold
   a request for up to 60 s, which is what the spec says; sending 60 would cost a minute per
   example. A valid hold is capped at `HOLD_CAP_SECS` (the server then answers exactly as it
   would after a longer hold with nothing new). The server runs with
   `poll.default_timeout_secs = 0` for the same reason when `timeout` is absent. Their `HEAD`
   never holds, so its values are sent as generated.
2. Cursors. A cursor is opaque: the server accepts only cursors it issued, which a pattern
   cannot express, so a well-formed cursor the server never issued (a generated one) is
   replaced by a real one, in `cursor=` and in the `Last-Event-ID` header of `/v1/sse` (read
   as one more cursor; fuzzed since `HEAD /v1/sse` answers at once). Cursors from earlier
   answers (links from publish and poll) are kept, and malformed ones are sent as generated
   and must get `400`.
3. Consumer requests (GET, and the HEAD that is checked like it) need a channel or a
   cursor, and name at most 64 distinct channels (`consumers.max_channels_per_request`,
   counted after splitting comma-separated values and removing duplicates); the spec can
   only say so in words. A request with neither gets the real cursor too, and well-formed
   channel lists are cut down to 64 distinct names.
4. `DELETE /v1/jobs/{id}` cancels a job, and the job stays readable (status `canceled`): the
   API contract says so. schemathesis's `use_after_free` check expects every DELETE to make its
   resource 404; that one failure is dropped for job cancels only (schemathesis reports the
   count of dropped failures). It still holds for webhook endpoints.
5. Without a private network namespace (see `.ci/schemathesis`), webhook URLs the spec accepts
   are pinned to a closed loopback port, so a generated URL never makes the server send a
   delivery anywhere else.
"""

import json
import math
import os
import re
import urllib.request
from pathlib import Path

import schemathesis

BASE_URL = os.environ["SCHEMATHESIS_SWITCHYARD_URL"]
API_KEY = os.environ["SCHEMATHESIS_SWITCHYARD_KEY"]
PINNED_WEBHOOK_URL = os.environ.get("SCHEMATHESIS_PIN_WEBHOOK_URL", "")

HOLD_CAP_SECS = 0.05

SPEC = json.loads((Path(__file__).resolve().parent.parent / "docs" / "openapi.json").read_text())
SCHEMAS = SPEC["components"]["schemas"]
CURSOR = re.compile(SPEC["components"]["parameters"]["Cursors"]["schema"]["items"]["pattern"])
WEBHOOK_URL = re.compile(SCHEMAS["WebhookUrl"]["pattern"])
WEBHOOK_URL_MAX = SCHEMAS["WebhookUrl"]["maxLength"]

CHANNELS = re.compile(SPEC["components"]["parameters"]["Channels"]["schema"]["items"]["pattern"])
MAX_CHANNELS = 64

CONSUMER_PATHS = {"/v1/poll", "/v1/sse", "/v1/stream"}

_real_cursor = None
# Every cursor the server has answered with in this run.
_issued = set()


def real_cursor():
    """A cursor the server issued (for the channel `schemathesis/cursor`)."""
    global _real_cursor
    if _real_cursor is None:
        request = urllib.request.Request(
            f"{BASE_URL}/v1/poll?channel=schemathesis/cursor&timeout=0",
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            _real_cursor = json.load(response)["cursor"]
        _issued.add(_real_cursor)
    return _real_cursor


def forged(value):
    """A well-formed cursor the server did not issue."""
    return isinstance(value, str) and value != "" and CURSOR.match(value) and value not in _issued


# A decimal number as the server reads it from a query string (a subset of Rust's f64 syntax).
DECIMAL = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")


def as_number(value):
    """The number a generated value stands for, or None (a bool, text, NaN, ...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and DECIMAL.match(value):
        value = float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return value
    return None


def cap(container, key, maximum, cap_to):
    """Caps a valid number (0 to `maximum`) at `cap_to`; anything else is left as generated."""
    value = as_number(container.get(key))
    if value is not None and 0 <= value <= maximum and value > cap_to:
        container[key] = cap_to


def as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def at_most_distinct(values, most):
    """Drops channel names past the first `most` distinct ones (keeping the commas)."""
    seen = set()
    out = []
    for value in values:
        pieces = []
        for name in value.split(","):
            if name == "" or name in seen:
                pieces.append(name)
            elif len(seen) < most:
                seen.add(name)
                pieces.append(name)
        out.append(",".join(pieces))
    return out


@schemathesis.hook
def before_call(context, case, kwargs):
    method, path = case.method.upper(), case.path
    query = case.query

    if (method, path) == ("GET", "/v1/poll") and query:
        cap(query, "timeout", 60, HOLD_CAP_SECS)
    if (method, path) == ("GET", "/v1/jobs/{id}") and query:
        cap(query, "wait", 60, HOLD_CAP_SECS)
    if (method, path) == ("POST", "/v1/jobs/claim") and isinstance(case.body, dict):
        cap(case.body, "wait_ms", 60000, int(HOLD_CAP_SECS * 1000))

    if method in ("GET", "HEAD") and path in CONSUMER_PATHS:
        if case.query is None:
            case.query = {}
            query = case.query
        cursors = as_list(query.get("cursor"))
        if any(forged(c) for c in cursors):
            query["cursor"] = [real_cursor() if forged(c) else c for c in cursors]
        for name, value in list((case.headers or {}).items()):
            if name.lower() == "last-event-id" and forged(value):
                case.headers[name] = real_cursor()
        values = as_list(query.get("channel"))
        if values and all(isinstance(v, str) and CHANNELS.match(v) for v in values):
            query["channel"] = at_most_distinct(values, MAX_CHANNELS)
            values = query["channel"]
        names = [
            name
            for value in values
            for name in (value.split(",") if isinstance(value, str) else [value])
            if name != ""
        ]
        if not names and not any(c != "" for c in as_list(query.get("cursor"))):
            query["cursor"] = [real_cursor()]

    if PINNED_WEBHOOK_URL and path.startswith("/v1/webhooks") and isinstance(case.body, dict):
        url = case.body.get("url")
        if isinstance(url, str) and len(url) <= WEBHOOK_URL_MAX and WEBHOOK_URL.match(url):
            case.body["url"] = PINNED_WEBHOOK_URL


def collect_cursors(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "cursor" and isinstance(item, str):
                _issued.add(item)
            else:
                collect_cursors(item)
    elif isinstance(value, list):
        for item in value:
            collect_cursors(item)


@schemathesis.hook
def after_call(context, case, response):
    """Remembers the cursors in every JSON answer (envelopes, publish, long-poll)."""
    if response.headers.get("content-type", [""])[0].startswith("application/json"):
        try:
            collect_cursors(json.loads(response.content))
        except ValueError:
            pass


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps every failure except use-after-free after a job cancel (see 4. above)."""
    free = getattr(failure, "free", "")
    return not (type(failure).__name__ == "UseAfterFree" and free.startswith("DELETE /v1/jobs/"))
