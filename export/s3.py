"""Where a model repository in object storage is: ``s3://BUCKET/PREFIX`` parsed and checked, the
endpoint of an S3-compatible server, and a boto3 client. The repository itself is ``export.object_store``."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from export.errors import ConfigError

ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""Where the endpoint of an S3-compatible server is read from, most specific first (as boto3 does)."""
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
PREFIX_PART_RE = re.compile(r"^[0-9A-Za-z._-]+$")  # what Triton's s3:// parser accepts in a path


@dataclass(frozen=True)
class S3Location:
    """``s3://BUCKET/PREFIX``: where a model repository lives in a bucket (PREFIX may be empty)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        """Parse ``s3://bucket/some/prefix``; raise ConfigError saying what is wrong."""
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise ConfigError(f"repository {uri!r} is not an S3 URI; expected s3://BUCKET/PREFIX")
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        parts = [p for p in prefix.split("/") if p]
        problems = []
        if not BUCKET_RE.match(bucket) or ".." in bucket:
            problems.append(f"bucket {bucket!r} must be 3-63 characters of a-z, 0-9, '.' and '-'")
        bad = [p for p in parts if not PREFIX_PART_RE.match(p) or p in (".", "..")]
        if bad:
            problems.append(f"prefix parts {bad} must use only A-Z, a-z, 0-9, '.', '_' and '-' (Triton's s3 paths)")
        if problems:
            raise ConfigError(f"invalid repository {uri!r}: " + "; ".join(problems))
        return cls(bucket, "/".join(parts))

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, *parts: str | int) -> str:
        """The object key of ``PREFIX/part/part...``."""
        return "/".join([p for p in (self.prefix, *map(str, parts)) if p != ""])

    def triton_uri(self, endpoint_url: str | None = None) -> str:
        """The ``--model-repository`` value for tritonserver.

        Triton takes a custom endpoint inside the URI: ``s3://http://HOST:PORT/BUCKET/PREFIX``
        (the port is required); on AWS itself, plain ``s3://BUCKET/PREFIX``.
        """
        if not endpoint_url:
            return self.uri
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"endpoint {endpoint_url!r} must look like http://HOST:PORT")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"s3://{parts.scheme}://{parts.hostname}:{port}/{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def __str__(self) -> str:
        return self.uri


def is_s3_uri(value: str | os.PathLike) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def endpoint_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The S3 endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; None means AWS itself."""
    env = os.environ if env is None else env
    return next((env[name] for name in ENDPOINT_ENV if env.get(name)), None)


def make_client(endpoint_url: str | None = None):
    """A boto3 S3 client; credentials and region from the standard AWS environment / config files."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 3, "mode": "standard"},
                    s3={"addressing_style": "path"} if endpoint_url else {})
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)
