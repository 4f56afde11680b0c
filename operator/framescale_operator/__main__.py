"""``python -m framescale_operator``: run the operator against the current cluster.

Settings come from ``FRAMESCALE_OPERATOR_*`` (see ``settings.py``); a bad value stops it
with one line per problem. Kubernetes credentials come from the in-cluster service account
or the current kubeconfig, AWS ones from boto3's usual chain (``AWS_ENDPOINT_URL`` included).
``kopf run -m framescale_operator.handlers`` works too, with kopf's own flags.
"""

from __future__ import annotations

import logging
import sys

import kopf

from framescale import kubeconfig
from framescale_operator import handlers
from framescale_operator.settings import OperatorSettings, load


class _QuietRoutine(logging.Filter):
    """Drop kopf's routine success lines that would repeat every second (the per-pipeline timer),
    on every Lease renewal, and on every liveness probe; failures are still logged."""

    ROUTINE = (
        "Timer 'reconcile' succeeded",
        "Handler 'lease_changed' succeeded",
        "Activity 'busyLeaseChanges' succeeded",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and str(record.msg).startswith(self.ROUTINE))


def configure_logging(settings: OperatorSettings) -> None:
    """One stream handler on the root logger: JSON objects (default) or text lines."""
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(debug=settings.log_level == "DEBUG", log_format=log_format, log_refkey="object")
    logging.getLogger().setLevel(settings.log_level)
    for name in ("kopf.objects", "kopf.activities.probe"):
        logging.getLogger(name).addFilter(_QuietRoutine())
    # Each boto3/urllib3 call at INFO would drown the operator's own lines.
    for noisy in ("botocore", "boto3", "urllib3", "kubernetes", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def watched_namespaces(settings: OperatorSettings) -> list[str]:
    """The namespaces to watch; empty means the whole cluster.

    When only some namespaces are watched, the Lease namespace is watched as well, or the
    busy Leases would never be seen.
    """
    namespaces = list(settings.namespaces)
    if namespaces and settings.lease_namespace and settings.lease_namespace not in namespaces:
        namespaces.append(settings.lease_namespace)
    return namespaces


def main() -> None:
    settings = load()
    configure_logging(settings)
    problem = kubeconfig.missing_cluster()
    if problem is not None:
        print(f"framescale operator cannot start: {problem}", file=sys.stderr)
        sys.exit(2)
    namespaces = watched_namespaces(settings)
    logging.getLogger(handlers.__name__).info(
        "starting", extra={"namespaces": namespaces or "all", "standalone": settings.standalone}
    )
    kopf.run(
        standalone=settings.standalone,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://{settings.health_host}:{settings.health_port}/healthz",
        memo=kopf.Memo(settings=settings),
    )


if __name__ == "__main__":
    main()
