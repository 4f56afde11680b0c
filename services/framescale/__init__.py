"""framescale: video object detection at fleet scale on Kubernetes.

This package holds the shared contracts (job messages, results, busy-node Leases,
settings base, AWS clients) and the data-path services: the worker and a local
TF-Serving-protocol model server.
"""

__version__ = "0.1.0"
