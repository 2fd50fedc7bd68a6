"""A real S3 protocol server for the tests: moto's server on a free localhost port, with one bucket.

    server = S3Server.start(bucket="leuk")   # sets AWS_ENDPOINT_URL, dummy keys and a region in os.environ
    server.uri("tune")                       # "s3://leuk/tune"
    server.stop()                            # an endpoint that is down (the storage-fault tests); close(): env back
    keys = server.user("reader", ["s3:GetObject", "s3:ListBucket"])   # (access key id, secret) of an IAM user
    with server.checking_credentials(): ...  # moto's IAM emulation: unknown keys, wrong secrets, denials refused

Processes started after `start` (a search's local Ray, the nodes of a `ray.cluster_utils.Cluster`) inherit the
environment and so reach the same server; the AWS SDK inside pyarrow reads AWS_ENDPOINT_URL.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass, field

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class S3Server:
    bucket: str
    port: int
    server: object = None
    saved: dict = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, bucket: str = "leuk") -> "S3Server":
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request in the test output
        self = cls(bucket=bucket, port=free_port())
        env = {**ENV, "AWS_ENDPOINT_URL": self.endpoint}
        self.saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.client().create_bucket(Bucket=bucket)
        return self

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def user(self, name: str, allowed_actions: list[str]) -> tuple[str, str]:
        """An IAM user allowed `allowed_actions` on every resource; its (access key id, secret access key)."""
        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint)
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": allowed_actions, "Resource": "*"}]}))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    @staticmethod
    @contextlib.contextmanager
    def checking_credentials():
        """Every request to the servers of this process is authenticated and authorised while inside (moto's
        INITIAL_NO_AUTH_ACTION_COUNT: 0 requests go unchecked); moto's default (nothing checked) after."""
        from moto import settings
        from moto.core.authorization import ActionAuthenticatorMixin

        saved = settings.INITIAL_NO_AUTH_ACTION_COUNT
        settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = 0, 0
        try:
            yield
        finally:
            settings.INITIAL_NO_AUTH_ACTION_COUNT = saved

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def close(self) -> None:
        self.stop()
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
