"""TF Serving's Prometheus metrics, kept in prometheus_client and written in TF Serving's exposition format.

Names and labels come from tensorflow_serving/servables/tensorflow/util.cc and model_servers/http_server.cc:
  * `/tensorflow/serving/request_count{model_name, status}`: counter, one per REST request, status = canonical
    error code name ("OK", "NOT_FOUND", ...), model_name "" when the URL named none.
  * `/tensorflow/serving/request_latency{model_name, API, entrypoint}`: histogram in microseconds, buckets
    10 * 1.8^k (33 buckets), recorded for successful REST requests only (API = "predict", "classify", ...).
  * `/tensorflow/serving/runtime_latency{model_name, API, runtime}`: histogram of the signature's run time,
    API "Predict", runtime "TF1" (predict_util.cc).

util/prometheus_exporter.cc turns every character outside [a-zA-Z0-9_] into ':' (so the names start with ':'),
writes `# TYPE` lines without `# HELP`, counters without prometheus_client's `_total` suffix or `_created`
samples, integer counter values, and bucket bounds with absl::StrCat's 6 significant digits. prometheus_client
holds the values (thread-safe counters and histograms); `render()` writes them in that format so a scraper
configured for the real server sees the same series.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = tuple(10 * 1.8**k for k in range(33))
CONTENT_TYPE = "text/plain; charset=utf-8"


def prometheus_name(tf_name: str) -> str:
    """GetPrometheusMetricName: '/tensorflow/serving/request_count' -> ':tensorflow:serving:request_count'."""
    name = re.sub(r"[^a-zA-Z0-9_]", ":", tf_name)
    return "_" + name if name[:1].isdigit() else name


def _bound(value: float) -> str:
    """absl::StrCat(double): %g with 6 significant digits."""
    return f"{value:.6g}"


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """The REST metrics of one server (own registry, so in-process test servers do not share counts)."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_count = Counter(
            prometheus_name("/tensorflow/serving/request_count"), "The total number of requests.",
            ["model_name", "status"], registry=self.registry,
        )
        self.request_latency = Histogram(
            prometheus_name("/tensorflow/serving/request_latency"),
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.runtime_latency = Histogram(
            prometheus_name("/tensorflow/serving/runtime_latency"),
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ["model_name", "API", "runtime"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )

    def record_request(self, model: str, api: str, code: str, latency_us: float) -> None:
        """RecordModelRequestCount for every request; RecordRequestLatency only when it succeeded."""
        self.request_count.labels(model, code).inc()
        if code == "OK":
            self.request_latency.labels(model, api, "REST").observe(latency_us)

    def record_runtime(self, model: str, latency_us: float) -> None:
        self.runtime_latency.labels(model, "Predict", "TF1").observe(latency_us)

    def render(self) -> bytes:
        """The page of PrometheusExporter::GeneratePage for these metrics."""
        lines: list[str] = []
        for family in self.registry.collect():
            if family.type == "counter":
                lines.append(f"# TYPE {family.name} counter")
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        lines.append(f"{family.name}{{{self._labels(sample.labels)}}} {int(sample.value)}")
            elif family.type == "histogram":
                lines.append(f"# TYPE {family.name} histogram")
                for sample in family.samples:
                    labels = dict(sample.labels)
                    if sample.name.endswith("_bucket"):
                        le = labels.pop("le")
                        le = "+Inf" if le == "+Inf" else _bound(float(le))
                        lines.append(f'{sample.name}{{{self._labels(labels)},le="{le}"}} {int(sample.value)}')
                    elif sample.name.endswith("_sum"):
                        lines.append(f"{sample.name}{{{self._labels(labels)}}} {sample.value:.6g}")
                    elif sample.name.endswith("_count"):
                        lines.append(f"{sample.name}{{{self._labels(labels)}}} {int(sample.value)}")
        return ("\n".join(lines) + "\n").encode()

    @staticmethod
    def _labels(labels: dict) -> str:
        return ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
