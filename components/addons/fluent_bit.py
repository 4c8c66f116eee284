"""aws-for-fluent-bit: every container's logs to one CloudWatch log group per cluster."""

from __future__ import annotations

from .. import versions
from .base import LOGGING_NAMESPACE, AddonContext

SERVICE_ACCOUNT = "aws-for-fluent-bit"


class FluentBit:
    def __init__(self, ctx: AddonContext):
        self.log_group = ctx.log_group("containers", f"/myelin/{ctx.cluster.cluster_name}/containers")
        self.role = ctx.irsa(
            "fluent-bit",
            LOGGING_NAMESPACE,
            SERVICE_ACCOUNT,
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                        "Resource": [self.log_group.arn, self.log_group.arn.apply(lambda a: f"{a}:*")],
                    },
                    {"Effect": "Allow", "Action": "logs:DescribeLogGroups", "Resource": "*"},
                ],
            },
        )
        self.release = ctx.release(
            "aws-for-fluent-bit",
            versions.AWS_FOR_FLUENT_BIT,
            LOGGING_NAMESPACE,
            {
                "serviceAccount": {"create": True, "name": SERVICE_ACCOUNT,
                                   "annotations": {"eks.amazonaws.com/role-arn": self.role.arn}},
                "cloudWatchLogs": {
                    "enabled": True,
                    "region": ctx.config.region,
                    "logGroupName": self.log_group.name,
                    # The chart's default logGroupTemplate (one group per namespace) takes precedence over
                    # logGroupName and would write to groups that neither exist nor are in the role's policy.
                    "logGroupTemplate": "",
                    # Streams stay per pod and container (the chart's logStreamTemplate); the prefix is its fallback.
                    "logStreamPrefix": "pod-",
                    "autoCreateGroup": False,
                },
                "cloudWatch": {"enabled": False},
                "firehose": {"enabled": False},
                "kinesis": {"enabled": False},
                "elasticsearch": {"enabled": False},
                # Logs from every node, GPU nodes included.
                "tolerations": [{"operator": "Exists"}],
                # Prometheus scrapes Fluent Bit's own metrics (output errors and retries feed an alert).
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "2020",
                                "prometheus.io/path": "/api/v1/metrics/prometheus"},
            },
            depends_on=self.role.resources,
        )
