""":func:`sdsnodes.stats` in the forms users log: a flat dict (TensorBoard, W&B) and the
Prometheus text exposition format (through prometheus-client, the ``metrics`` extra)."""

from __future__ import annotations

from typing import Any

PREFIX = "sds"

_COUNTERS = {  # cumulative figures: Prometheus counters (the "_total" suffix is the client's)
    "samples": "samples produced by the graphs",
    "batches": "batches the training loop received",
    "wait_s": "seconds the training loop waited for batches (data stall time)",
}
_CACHE_COUNTERS = {
    "hits": "files found in the cache",
    "misses": "files downloaded into the cache",
    "bytes_downloaded": "bytes downloaded into the cache",
    "evictions": "files evicted from the cache directory since the loader was made",
}
_COMPOSE_COUNTERS = {
    "composed_objects": "small gs:// files fetched through a composed object",
    "composed_groups": "composed objects fetched (GCS compose)",
    "fallback_objects": "files of failed compose groups, fetched one by one",
    "fallback_groups": "compose groups that failed and were fetched one by one",
}
_CACHE_GAUGES = {
    "hit_rate": "hits / (hits + misses)",
    "in_flight": "downloads running now",
    "bytes": "bytes of ready files in the cache directory",
    "pinned_files": "files pinned by live processes",
    "max_bytes": "the cache's byte budget",
}


def flat(stats: dict[str, Any], prefix: str = "data/") -> dict[str, float]:
    """``stats`` as one level of ``"<prefix>a/b/c": number`` (None values left out), for
    ``SummaryWriter.add_scalar`` or ``wandb.log``; adds ``wait_fraction`` (``wait_s /
    elapsed_s``) and ``samples_per_s`` (``samples`` of the loop / ``elapsed_s``) when timed.

    Example:
        >>> for name, value in sdsnodes.flat(sdsnodes.stats(loader)).items():
        ...     writer.add_scalar(name, value, step)
    """
    out: dict[str, float] = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, f"{name}/{key}" if name else str(key))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix + name] = value

    walk(stats, "")
    elapsed = stats.get("elapsed_s")
    if elapsed:
        out[prefix + "wait_fraction"] = (stats.get("wait_s") or 0.0) / elapsed
        out[prefix + "samples_per_s"] = (stats.get("loop_samples") or 0) / elapsed
    return out


def to_prometheus(stats: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    """``stats`` in the Prometheus text exposition format (version 0.0.4), built with
    prometheus-client: counters ``sds_samples_total``, ``sds_wait_seconds_total``,
    ``sds_cache_hits_total``…, ``sds_skipped_total{reason}``, ``sds_node_items_total{node}``,
    ``sds_node_busy_seconds_total{node}``, ``sds_node_wait_seconds_total{node}``,
    ``sds_decode_seconds_total{codec}``, ``sds_compose_composed_objects_total``…; gauges
    ``sds_cache_hit_rate``, ``sds_cache_bytes``….

    Args:
        stats (dict): what :func:`sdsnodes.stats` returned.
        labels (dict[str, str] | None): labels added to every sample (e.g. ``{"rank": "0"}``).

    Returns:
        str: the exposition text (serve it, or write it for node_exporter's textfile collector).

    Raises:
        ImportError: prometheus-client is not installed (``pip install sdsnodes[metrics]``).
    """
    try:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError as error:  # pragma: no cover - the extra is in dev
        raise ImportError(
            "to_prometheus needs prometheus-client: pip install 'sdsnodes[metrics]'"
        ) from error
    extra = dict(labels or {})
    names = list(extra)
    families: list[Any] = []

    def add(
        kind: Any, name: str, doc: str, rows: list[tuple[list[str], float]], *keys: str
    ) -> None:
        family = kind(f"{PREFIX}_{name}", doc, labels=[*keys, *names])
        for values, value in rows:
            if value is not None:
                family.add_metric([*values, *extra.values()], float(value))
        families.append(family)

    for key, doc in _COUNTERS.items():
        metric = "wait_seconds" if key == "wait_s" else key
        add(CounterMetricFamily, metric, doc, [([], stats.get(key))])
    cache = stats.get("cache", {})
    for key, doc in _CACHE_COUNTERS.items():
        add(CounterMetricFamily, f"cache_{key}", doc, [([], cache.get(key))])
    for key, doc in _CACHE_GAUGES.items():
        add(GaugeMetricFamily, f"cache_{key}", doc, [([], cache.get(key))])
    compose = stats.get("compose", {})
    for key, doc in _COMPOSE_COUNTERS.items():
        add(CounterMetricFamily, f"compose_{key}", doc, [([], compose.get(key))])
    skipped = [([r], n) for r, n in stats.get("skipped", {}).items()]
    add(CounterMetricFamily, "skipped", "samples skipped, by reason", skipped, "reason")
    nodes = stats.get("nodes", {})
    for key, metric, doc in (
        ("items", "node_items", "items each node yielded"),
        ("busy_s", "node_busy_seconds", "seconds in each node's next(), its source's excluded"),
        ("wait_s", "node_wait_seconds", "seconds each node waited on its source"),
    ):
        add(CounterMetricFamily, metric, doc, [([n], c[key]) for n, c in nodes.items()], "node")
    decode = [([c], s) for c, s in stats.get("decode_s", {}).items()]
    add(CounterMetricFamily, "decode_seconds", "seconds decoding, per codec", decode, "codec")

    class _Stats:
        def collect(self) -> list[Any]:
            return families

    registry = CollectorRegistry()
    registry.register(_Stats())
    return generate_latest(registry).decode()
