"""An error-ratio health check written in Python.

The app under watch serves its own counters as JSON, e.g.
`{"requests": 1200, "errors": 3}`; the check fails when errors/requests is
above `max_error_ratio`. All I/O goes through the host's imports: WASI grants
this component no network, files or environment.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import config, http, log
from wit_world.imports.types import CheckContext, CheckResult, Metric, Status

DEFAULT_MAX_ERROR_RATIO = 0.05


class WitWorld(wit_world.WitWorld):
    def check(self, ctx: CheckContext) -> CheckResult:
        url = config.get("url")
        if not url:
            raise Err("config `url` is required")
        max_ratio = _float_config("max_error_ratio", DEFAULT_MAX_ERROR_RATIO)

        try:
            resp = http.send(
                http.Request(
                    method="GET", url=url, headers=[], body=None, timeout_ms=None, max_retries=None
                )
            )
        except Err as e:
            raise Err(f"GET {url}: {_describe(e.value)}")
        if not 200 <= resp.status < 300:
            return CheckResult(Status.FAIL, f"GET {url} returned {resp.status}", [])

        try:
            counters = json.loads(resp.body)
            requests, errors = int(counters["requests"]), int(counters["errors"])
        except (ValueError, KeyError, TypeError) as e:
            raise Err(f"GET {url}: expected JSON {{\"requests\": N, \"errors\": M}} ({e!r})")
        if requests <= 0:
            raise Err("no data: the app reported 0 requests")

        ratio = errors / requests
        log.log(log.Level.DEBUG, f"{ctx.active.version}: {errors}/{requests} errors")
        status = Status.FAIL if ratio > max_ratio else Status.PASS
        summary = f"error ratio {ratio:.4f} ({errors}/{requests}), max {max_ratio}"
        metrics = [Metric("error_ratio", ratio), Metric("requests", float(requests))]
        return CheckResult(status, summary, metrics)


def _float_config(key: str, default: float) -> float:
    value = config.get(key)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise Err(f"config `{key}` must be a number, got {value!r}")


def _describe(error: http.Error) -> str:
    match error:
        case http.Error_Denied(host):
            return f"denied: {host}"
        case http.Error_InvalidRequest(why):
            return f"invalid request: {why}"
        case http.Error_Timeout():
            return "timed out"
        case http.Error_Transport(why):
            return f"transport error: {why}"
        case http.Error_TooLarge(limit):
            return f"response larger than {limit} bytes"
    return repr(error)
