"""Stacks of deploy/cloudformation/pipeline.yaml deployed into the session's moto server, and the
operator's harness (kopf against the Kubernetes API emulator) to point at what they made."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from framescale.local.moto_server import MotoServer
from tests import support
from tests.cloudformation import stacks

# The operator's harness, shared with its own integration tests: one emulator and one operator
# process for this module.
from tests.integration.conftest import kube_api  # noqa: F401
from tests.integration.operator.conftest import kube, operator_process  # noqa: F401

CLUSTER = {
    "OidcProvider": "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE",
    "ClusterName": "framescale-test",
    "ClusterEndpoint": "https://EXAMPLE.gr7.us-east-1.eks.amazonaws.com",
    "ClusterCertificateAuthority": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t",
    "ClusterServiceCidr": "10.100.0.0/16",
}


@dataclass
class Stacks:
    main: stacks.Deployed  # the defaults: GPU, On-Demand, S3 notifications, its own operator role
    second: stacks.Deployed  # CPU, Spot, no notifications, a model bucket of its own, main's operator role
    external: stacks.Deployed  # the node group made elsewhere (eksctl): ExistingAutoScalingGroupName
    external_group: str
    gaps: dict[str, list[str]]


@pytest.fixture(scope="module")
def module_aws_env(moto_server: MotoServer) -> Iterator[dict[str, str]]:
    """AWS_ENDPOINT_URL and friends for the whole module (the stacks outlive one test)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in moto_server.client_env.items():
            patch.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            patch.delenv(key, raising=False)
        yield dict(moto_server.client_env)


@pytest.fixture(scope="module")
def deployed(module_aws_env: dict[str, str]) -> Stacks:
    ec2 = support.client("ec2")
    subnets = ",".join(s["SubnetId"] for s in ec2.describe_subnets()["Subnets"][:2])
    group = ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]
    stacks.node_image_parameter()
    suffix = uuid.uuid4().hex[:6]
    node_group = {"Subnets": subnets, "NodeSecurityGroups": group}
    main = stacks.deploy(f"fs-main-{suffix}", {"PipelineName": f"main{suffix}", **CLUSTER, **node_group})
    second = stacks.deploy(
        f"fs-cpu-{suffix}",
        {
            "PipelineName": f"cpu{suffix}",
            **CLUSTER,
            **node_group,
            "NodeGpu": "false",
            "NodeInstanceType": "c6i.2xlarge",
            "CapacityType": "SPOT",
            "NodeMin": "1",
            "NodeMax": "3",
            "S3Notifications": "false",
            "ModelBucket": f"models-{suffix}",
            "ModelPrefix": "ssd/",
            "VisibilityTimeoutSeconds": "300",
            "OperatorRoleName": main.outputs["OperatorRoleName"],
            "CreateAccessEntry": "false",
        },
    )
    # What eksctl would have made (deploy/eksctl/nodegroup.yaml), here a plain group.
    external_group = f"eksctl-nodes-{suffix}"
    support.client("ec2").create_launch_template(
        LaunchTemplateName=external_group, LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g4dn.xlarge"}
    )
    support.client("autoscaling").create_auto_scaling_group(
        AutoScalingGroupName=external_group,
        LaunchTemplate={"LaunchTemplateName": external_group},
        MinSize=0,
        MaxSize=4,
        VPCZoneIdentifier=subnets,
    )
    external = stacks.deploy(
        f"fs-ext-{suffix}",
        {
            "PipelineName": f"ext{suffix}",
            "OidcProvider": CLUSTER["OidcProvider"],
            "ClusterName": "framescale-test",
            "ExistingAutoScalingGroupName": external_group,
        },
    )
    gaps = {d.name: stacks.fill_moto_gaps(d) for d in (main, second, external)}
    return Stacks(main=main, second=second, external=external, external_group=external_group, gaps=gaps)
