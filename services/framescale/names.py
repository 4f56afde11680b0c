"""Names several parts must agree on: the custom resource, busy-node Leases, annotations.

Changing a value here is a protocol change between the worker, the operator and the chart.
"""

from __future__ import annotations

# The VideoPipeline custom resource.
GROUP = "framescale.io"
VERSION = "v1alpha1"
KIND = "VideoPipeline"
PLURAL = "videopipelines"
SINGULAR = "videopipeline"
SHORT_NAME = "vp"
CRD_NAME = f"{PLURAL}.{GROUP}"

# Busy-node Leases (coordination.k8s.io/v1), one per node, held by the worker on that node.
LEASE_NAME_PREFIX = "framescale-busy-"
LEASE_COMPONENT_LABEL = "framescale.io/component"
LEASE_COMPONENT_VALUE = "busy-lease"
LEASE_PIPELINE_LABEL = "framescale.io/pipeline"
LEASE_NODE_ANNOTATION = "framescale.io/node-name"
LEASE_ACTIVE_JOBS_ANNOTATION = "framescale.io/active-jobs"
# The drain handshake (framescale.busy_lease): the worker writes its state and its reply, the
# operator writes the request. Each side merge-patches only its own keys.
LEASE_STATE_ANNOTATION = "framescale.io/worker-state"
LEASE_ADMITTED_BY_ANNOTATION = "framescale.io/admitted-by"
LEASE_DRAIN_REQUEST_ANNOTATION = "framescale.io/drain-request"
LEASE_DRAIN_MODE_ANNOTATION = "framescale.io/drain-mode"
LEASE_DRAIN_REQUESTED_BY_ANNOTATION = "framescale.io/drain-requested-by"
LEASE_DRAIN_REPLY_ANNOTATION = "framescale.io/drain-reply"

# Where protection against scale-in must sit for node autoscalers: both ignore DaemonSet pods.
CLUSTER_AUTOSCALER_SCALE_DOWN_DISABLED = "cluster-autoscaler.kubernetes.io/scale-down-disabled"
KARPENTER_DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"

# The termination lifecycle hook (autoscaling:EC2_INSTANCE_TERMINATING) on the node group that
# holds instances terminated by anyone but the operator while their worker drains; the operator
# handles the hook of this name unless the VideoPipeline names another.
DEFAULT_LIFECYCLE_HOOK_NAME = "framescale-drain"

# EC2 tags with which the operator marks each protection flag it turned on (value: the pipeline,
# namespace/name), so that it only ever lifts its own; its IAM policy allows these keys alone.
SCALE_IN_MARKER_TAG = "framescale.io/scale-in-protected-by"
TERMINATION_MARKER_TAG = "framescale.io/termination-protected-by"
PROTECTION_MARKER_TAGS = (SCALE_IN_MARKER_TAG, TERMINATION_MARKER_TAG)

# Default label that selects the accelerator nodes the DaemonSet runs on.
ACCELERATOR_NODE_LABEL = "framescale.io/accelerator"

# SQS message attribute carrying the reason a job was dead-lettered by the worker.
FAILURE_REASON_ATTRIBUTE = "framescale-failure-reason"
FAILURE_STAGE_ATTRIBUTE = "framescale-failure-stage"
