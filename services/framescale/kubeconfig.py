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


def missing_cluster() -> str | None:
    """Why no cluster can be reached from here, or None when one is configured.

    A start-up check: without it the operator would retry its start-up activity every minute,
    logging the same traceback, where one line saying what is missing is what a user needs.
    """
    from kubernetes import client, config

    try:
        load(client.Configuration())
    except config.ConfigException as error:
        return (
            "no Kubernetes cluster configured: not in a pod (no service account, KUBERNETES_SERVICE_HOST unset) "
            f"and no usable kubeconfig ({error}); run it in the cluster or point KUBECONFIG at one"
        )
    return None
