"""Prometheus metrics shared by every server: requests, latencies, errors, batching."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

REQUESTS = Counter("ifgan_requests_total", "RPCs handled, by method and status code",
                   ["service", "method", "code"])
LATENCY = Histogram("ifgan_request_seconds", "RPC latency in seconds, by method", ["service", "method"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
IN_FLIGHT = Gauge("ifgan_requests_in_flight", "RPCs being handled now", ["service"])
QUEUE_DEPTH = Gauge("ifgan_batch_queue_depth", "Items waiting in a dynamic batcher queue, all lanes (the autoscaling "
                    "signal)", ["service", "queue"])
LANE_QUEUE_DEPTH = Gauge("ifgan_batch_lane_queue_depth", "Items waiting in one priority lane of a batcher queue",
                         ["service", "queue", "lane"])
BATCH_SIZE = Histogram("ifgan_batch_size", "Items per executed batch", ["service", "queue"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
QUEUE_WAIT = Histogram("ifgan_batch_queue_seconds", "Seconds a request waited in a batcher queue for its first batch, "
                       "by lane", ["service", "queue", "lane"],
                       buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5))
REJECTED = Counter("ifgan_batch_rejected_total", "Requests a batcher refused, dropped or delayed, by lane and reason "
                   "(queue_full, queue_timeout, delayed, deadline, cancelled, error, closed)",
                   ["service", "queue", "lane", "reason"])


def start_metrics_server(port: int, host: str) -> int:
    """Serves /metrics on `port` (0 picks a free one); returns the bound port."""
    server, _thread = start_http_server(port, addr=host)
    return server.server_address[1]
