"""A real S3 server for the test session: moto's `moto_server` on a free loopback port.

Buckets are made per test through its S3 API (boto3), so tests never share objects.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.net import free_port

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]

    def settings(self, bucket: str) -> dict[str, object]:
        """Settings overrides that point the gateway at `bucket` on this server."""
        return {
            "storage_url": f"s3://{bucket}/cc",
            "storage_endpoint": self.endpoint,
            "storage_region": REGION,
            "storage_access_key_id": ACCESS_KEY,
            "storage_secret_access_key": SECRET_KEY,
            "storage_allow_http": True,
        }

    def create_bucket(self, bucket: str) -> None:
        import boto3

        client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )  # fmt: skip
        client.create_bucket(Bucket=bucket)


@contextmanager
def s3_server() -> Iterator[S3Server]:
    port = free_port()
    binary = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield S3Server(endpoint, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
