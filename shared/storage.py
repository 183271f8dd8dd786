"""S3-compatible object storage (moto locally; Supabase Storage's S3 endpoint or AWS S3)."""

from __future__ import annotations

from functools import cache
from typing import Any, BinaryIO

import boto3
from botocore.config import Config

from shared.settings import settings


@cache
def client() -> Any:
    """One client per process; S3_ENDPOINT_URL points it at a non-AWS endpoint."""
    return boto3.client(
        "s3",
        endpoint_url=settings().s3_endpoint_url or None,
        region_name=settings().aws_region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


def ensure_bucket(bucket: str) -> None:
    s3 = client()
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError:
        s3.create_bucket(Bucket=bucket)


def upload(bucket: str, key: str, body: BinaryIO, content_type: str) -> None:
    client().upload_fileobj(body, bucket, key, ExtraArgs={"ContentType": content_type})


def read_bytes(bucket: str, key: str) -> tuple[bytes, str]:
    """The object's bytes and content type."""
    obj = client().get_object(Bucket=bucket, Key=key)
    return obj["Body"].read(), str(obj.get("ContentType", "application/octet-stream"))


def size(bucket: str, key: str) -> int:
    return int(client().head_object(Bucket=bucket, Key=key)["ContentLength"])
