"""Telemetry: per route x backend x step latency histograms and counters, step and rolling windows,
shadow diff counts, and the Prometheus exposition of all of it.

    telemetry = Telemetry()
    telemetry.begin_step("catalog", "3:weight-25")
    telemetry.record(route="catalog", backend="catalog", step="3:weight-25", method="GET", status=200,
                     duration_s=0.012, upstream_s=0.010, bytes_in=0, bytes_out=512)
    telemetry.side_stats("catalog", "catalog")            # since the step began
    telemetry.side_stats("catalog", "catalog", window=60)  # the last minute
"""

from .histogram import PROMETHEUS_BUCKETS, LogLinearHistogram
from .prometheus import CONTENT_TYPE
from .recorder import METHODS, OVERFLOW, Telemetry, status_class

__all__ = ["CONTENT_TYPE", "METHODS", "OVERFLOW", "PROMETHEUS_BUCKETS", "LogLinearHistogram", "Telemetry",
           "status_class"]
