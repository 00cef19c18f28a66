"""Instant queries against Prometheus through prometheus-api-client; the only module that knows its API."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from controller.errors import SourceUnavailable
from controller.structs import QueryRow


class PrometheusSource:
    def __init__(self, url: str, *, timeout: float, retries: int) -> None:
        retry = Retry(
            total=retries,
            connect=retries,
            read=0,  # a slow Prometheus is not retried: the timeout already said too much
            backoff_factor=0.2,
            status_forcelist=(500, 502, 503, 504),
            allowed_methods=frozenset({"GET", "POST"}),
            raise_on_status=False,
        )
        base = url.rstrip("/")
        self._client = PrometheusConnect(url=base, retry=retry, timeout=timeout, method="POST")
        # For messages only: credentials in the URL never reach logs or summaries.
        self.url = _without_credentials(base)

    def query(self, promql: str, *, at: float) -> list[QueryRow]:
        try:
            result = self._client.custom_query(promql, params={"time": f"{at:.3f}"})
        except PrometheusApiClientException as error:
            raise SourceUnavailable(
                f"Prometheus at {self.url} refused the query: {_short(str(error))}"
            ) from None
        except requests.exceptions.JSONDecodeError as error:  # cut short, HTML from a proxy, ...
            raise SourceUnavailable(
                f"Prometheus at {self.url} returned a malformed answer (not JSON: {_short(str(error))})"
            ) from None
        except requests.Timeout:
            raise SourceUnavailable(f"Prometheus at {self.url} did not answer in time") from None
        except requests.RequestException as error:
            # urllib3's retry wraps read timeouts into a ConnectionError; the text still says so.
            if "timed out" in str(error).lower():
                raise SourceUnavailable(f"Prometheus at {self.url} did not answer in time") from None
            raise SourceUnavailable(
                f"Prometheus at {self.url} is unreachable ({type(error).__name__}); "
                "check --prometheus-url / controller.prometheus_url"
            ) from None
        except ValueError as error:  # body is not JSON (cut short, HTML from a proxy, ...)
            raise SourceUnavailable(
                f"Prometheus at {self.url} returned a malformed answer: {_short(str(error))}"
            ) from None
        except (KeyError, TypeError, AttributeError):
            # 200 without data.result: {"status": "error", ...} from the server or a proxy, or another shape.
            raise SourceUnavailable(
                f"Prometheus at {self.url} returned a malformed answer (no data.result; status error?)"
            ) from None
        return parse_vector(result, self.url)

    def close(self) -> None:
        self._client.close()


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return str(urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])))


def _short(text: str) -> str:
    return text if len(text) <= 300 else text[:300] + "..."


def parse_vector(result: Any, url: str) -> list[QueryRow]:
    """An instant-vector result as rows; anything else is a malformed answer, never silently empty."""
    if not isinstance(result, list):
        raise SourceUnavailable(f"Prometheus at {url} returned a malformed result (not a vector)")
    rows = []
    for sample in result:
        try:
            labels = sample["metric"]
            stamp, text = sample["value"]
            # The HTTP API sends [<unix time>, "<value as a string>"]; anything else is not Prometheus.
            if not isinstance(text, str) or isinstance(stamp, bool) or not isinstance(stamp, int | float):
                raise TypeError
            value = float(text)
        except (KeyError, IndexError, TypeError, ValueError):
            raise SourceUnavailable(
                f"Prometheus at {url} returned a malformed sample: {_short(repr(sample))}"
            ) from None
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise SourceUnavailable(f"Prometheus at {url} returned malformed labels: {_short(repr(labels))}")
        if math.isnan(value):
            continue
        rows.append(QueryRow(labels, value))
    return rows
