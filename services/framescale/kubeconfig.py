"""Where a Kubernetes client finds its cluster: in-cluster config, else the local kubeconfig."""

from __future__ import annotations

from typing import Any


def load(configuration: Any | None = None) -> None:
    """Fill ``configuration`` (the kubernetes package's default one when None) for this cluster.

    In a pod, the service account's token and CA; elsewhere (a developer's machine, kind), the
    kubeconfig file that kubectl uses.
    """
    from kubernetes import config

    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
