#!/usr/bin/env python3
"""Smoke-check the running local emulators: each answers a real AWS call, and none listens
on a non-loopback address.

    .local/venv/bin/python infra/local/check.py

Reads the endpoints from the environment (FANOUT_*_ENDPOINT) or .local/run/env. Checks only
the emulators listed there. Exit status 0 when all pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[2]
ENV_FILE = ROOT / ".local" / "run" / "env"
VARS = ["FANOUT_KINESIS_ENDPOINT", "FANOUT_MOTO_ENDPOINT",
        "FANOUT_MOTO_KINESIS_ENDPOINT", "FANOUT_KINESALITE_ENDPOINT"]
CFG = Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=10)


def endpoints() -> dict[str, str]:
    found = {}
    if ENV_FILE.is_file():
        for line in ENV_FILE.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                k, v = line[len("export "):].split("=", 1)
                found[k] = v
    for v in VARS:
        if os.environ.get(v):
            found[v] = os.environ[v]
    return {v: found[v] for v in VARS if v in found}


def client(service: str, url: str):
    return boto3.client(service, endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="123456789012", aws_secret_access_key="x",
                        config=CFG)


def main() -> int:
    eps = endpoints()
    if not eps:
        print("check.py: no emulator endpoints found; run infra/local/start.sh", file=sys.stderr)
        return 1
    failed = 0
    for var, url in eps.items():
        try:
            n = len(client("kinesis", url).list_streams()["StreamNames"])
            detail = f"ListStreams ok ({n} streams)"
            if var == "FANOUT_MOTO_ENDPOINT":
                t = len(client("dynamodb", url).list_tables()["TableNames"])
                acct = client("sts", url).get_caller_identity()["Account"]
                detail += f", ListTables ok ({t} tables), GetCallerIdentity {acct}"
            print(f"ok    {var}={url}: {detail}")
        except Exception as e:  # noqa: BLE001 - report any failure
            failed += 1
            print(f"FAIL  {var}={url}: {e}")
    ports = {str(urlparse(u).port) for u in eps.values()}
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        local = line.split()[3]
        addr, _, port = local.rpartition(":")
        if port in ports and addr not in ("127.0.0.1", "[::1]"):
            failed += 1
            print(f"FAIL  port {port} listens on {local} (not loopback)")
    print(f"check.py: {'OK' if not failed else f'{failed} problem(s)'}: {len(eps)} emulator(s) checked")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
