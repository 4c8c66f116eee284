"""Policy pack entry point: `pulumi preview --policy-pack policy`."""

from pulumi_policy import PolicyPack

from myelin_policies import POLICIES

PolicyPack(name="myelin-security", policies=POLICIES)
