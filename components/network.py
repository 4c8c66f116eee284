"""`Network`: a VPC over N availability zones with public and private subnets, or an existing one."""

from __future__ import annotations

import ipaddress

import pulumi
import pulumi_aws as aws

from .config import NetworkConfig

# Interface endpoints that let nodes in private subnets without NAT pull images and reach AWS APIs.
_INTERFACE_ENDPOINTS = ("ecr.api", "ecr.dkr", "sts", "logs", "ec2", "elasticloadbalancing", "autoscaling", "eks")


class Network(pulumi.ComponentResource):
    """Public subnets (internet-facing load balancers and NAT gateways), private subnets (nodes and pods) and
    internal load balancer subnets (internal ALBs only), per AZ.

    Internal ALBs get subnets of their own so that API pods can admit them by address: in the private
    subnets an ALB's address would be indistinguishable from any node's or pod's.
    """

    vpc_id: pulumi.Output[str]
    public_subnet_ids: list[pulumi.Output[str]]
    private_subnet_ids: list[pulumi.Output[str]]
    internal_lb_subnet_ids: list[pulumi.Output[str]]
    vpc_cidr: str
    public_cidrs: list[str]
    private_cidrs: list[str]
    internal_lb_cidrs: list[str]

    def __init__(self, name: str, config: NetworkConfig, cluster_name: str, region: str,
                 extra_endpoints: tuple[str, ...] = (), opts: pulumi.ResourceOptions | None = None):
        """`extra_endpoints`: interface endpoints the stack's APIs need without NAT (an AsyncAPI: sqs)."""
        super().__init__("myelin:infra:Network", name, None, opts)
        if config.existing:
            ex = config.existing
            self.vpc_id = pulumi.Output.from_input(ex.vpc_id)
            self.vpc_cidr = ex.vpc_cidr
            self.public_subnet_ids = [pulumi.Output.from_input(s) for s in ex.public_subnet_ids]
            self.private_subnet_ids = [pulumi.Output.from_input(s) for s in ex.private_subnet_ids]
            self.internal_lb_subnet_ids = [pulumi.Output.from_input(s) for s in ex.internal_lb_subnet_ids]
            self.public_cidrs = list(ex.public_subnet_cidrs)
            self.private_cidrs = []  # unknown and unused: nothing admits traffic by the node subnets' ranges
            self.internal_lb_cidrs = list(ex.internal_lb_subnet_cidrs)
            self.register_outputs({"vpc_id": self.vpc_id})
            return

        child = pulumi.ResourceOptions(parent=self)
        self.vpc_cidr = config.vpc_cidr
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=config.vpc_cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={"Name": f"{cluster_name}-vpc"},
            opts=child,
        )
        self.vpc_id = vpc.id
        azs = aws.get_availability_zones_output(state="available", opts=pulumi.InvokeOutputOptions(parent=self))

        # Carve /20s (or smaller) out of the VPC: public ones first, then the larger private range.
        net = ipaddress.ip_network(config.vpc_cidr)
        blocks = list(net.subnets(new_prefix=min(net.prefixlen + 4, 24)))
        public_blocks = blocks[: config.az_count]
        private_blocks = blocks[8 : 8 + config.az_count]
        # Internal load balancer subnets: one block split per AZ (an ALB needs at least a /27 with 8 free addresses).
        lb_block = blocks[7]
        lb_blocks = list(lb_block.subnets(new_prefix=min(lb_block.prefixlen + 3, 27)))[: config.az_count]
        self.public_cidrs = [str(b) for b in public_blocks]
        self.private_cidrs = [str(b) for b in private_blocks]
        self.internal_lb_cidrs = [str(b) for b in lb_blocks]

        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags={"Name": f"{cluster_name}-igw"}, opts=child)
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt",
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            tags={"Name": f"{cluster_name}-public"},
            opts=child,
        )
        cluster_tag = {f"kubernetes.io/cluster/{cluster_name}": "shared"}
        public_subnets, private_subnets, internal_lb_subnets, nats = [], [], [], []
        for i in range(config.az_count):
            az = azs.names[i]
            pub = aws.ec2.Subnet(
                f"{name}-public-{i}",
                vpc_id=vpc.id,
                cidr_block=self.public_cidrs[i],
                availability_zone=az,
                map_public_ip_on_launch=False,  # only load balancers and NAT gateways live here
                tags={"Name": f"{cluster_name}-public-{i}", "kubernetes.io/role/elb": "1", **cluster_tag},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(f"{name}-public-{i}", subnet_id=pub.id, route_table_id=public_rt.id, opts=child)
            public_subnets.append(pub)
            if config.nat == "per_az" or (config.nat == "single" and i == 0):
                eip = aws.ec2.Eip(f"{name}-nat-{i}", domain="vpc", tags={"Name": f"{cluster_name}-nat-{i}"}, opts=child)
                nats.append(
                    aws.ec2.NatGateway(
                        f"{name}-nat-{i}",
                        allocation_id=eip.id,
                        subnet_id=pub.id,
                        tags={"Name": f"{cluster_name}-nat-{i}"},
                        opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
                    )
                )
        private_route_tables = []
        for i in range(config.az_count):
            routes = []
            if nats:
                nat = nats[i] if config.nat == "per_az" else nats[0]
                routes = [aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat.id)]
            rt = aws.ec2.RouteTable(
                f"{name}-private-rt-{i}", vpc_id=vpc.id, routes=routes,
                tags={"Name": f"{cluster_name}-private-{i}"}, opts=child,
            )
            private_route_tables.append(rt)
            sub = aws.ec2.Subnet(
                f"{name}-private-{i}",
                vpc_id=vpc.id,
                cidr_block=self.private_cidrs[i],
                availability_zone=azs.names[i],
                map_public_ip_on_launch=False,
                # No load balancer role tag: internal ALBs go to the subnets below, never among the nodes.
                tags={"Name": f"{cluster_name}-private-{i}", **cluster_tag},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(f"{name}-private-{i}", subnet_id=sub.id, route_table_id=rt.id, opts=child)
            private_subnets.append(sub)
            lb = aws.ec2.Subnet(
                f"{name}-internal-lb-{i}",
                vpc_id=vpc.id,
                cidr_block=self.internal_lb_cidrs[i],
                availability_zone=azs.names[i],
                map_public_ip_on_launch=False,
                tags={"Name": f"{cluster_name}-internal-lb-{i}", "kubernetes.io/role/internal-elb": "1", **cluster_tag},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(f"{name}-internal-lb-{i}", subnet_id=lb.id, route_table_id=rt.id, opts=child)
            internal_lb_subnets.append(lb)

        # S3 gateway endpoint: free, and ECR image layers come from S3.
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[rt.id for rt in private_route_tables],
            opts=child,
        )
        if config.nat == "none":
            sg = aws.ec2.SecurityGroup(
                f"{name}-endpoints",
                vpc_id=vpc.id,
                description="HTTPS from the VPC to interface endpoints",
                ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=443, to_port=443,
                                                          cidr_blocks=[config.vpc_cidr])],
                opts=child,
            )
            for svc in (*_INTERFACE_ENDPOINTS, *extra_endpoints):
                aws.ec2.VpcEndpoint(
                    f"{name}-{svc.replace('.', '-')}",
                    vpc_id=vpc.id,
                    service_name=f"com.amazonaws.{region}.{svc}",
                    vpc_endpoint_type="Interface",
                    private_dns_enabled=True,
                    subnet_ids=[s.id for s in private_subnets],
                    security_group_ids=[sg.id],
                    opts=child,
                )

        self.public_subnet_ids = [s.id for s in public_subnets]
        self.private_subnet_ids = [s.id for s in private_subnets]
        self.internal_lb_subnet_ids = [s.id for s in internal_lb_subnets]
        self.register_outputs({"vpc_id": self.vpc_id, "private_subnet_ids": self.private_subnet_ids})
