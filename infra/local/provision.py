#!/usr/bin/env python3
"""Create the two-account demo topology on the local emulators, idempotently.

Run with the venv made by infra/local/install.sh:

    .local/venv/bin/python infra/local/provision.py [--reset] [--json]

New account 123456789012:
  kinesis-local  stream fanout-demo-source (4 shards)      access key id "123456789012"
  moto           DynamoDB table fanout-state (pk S, sk S, PAY_PER_REQUEST)
  moto           S3 bucket fanout-dead-letters-123456789012
Old account 222222222222:
  kinesis-local  stream fanout-demo-target (3 shards)      access key id "222222222222"
  moto (IAM)     role fanout-writer: trusted by account 123456789012 with
                 sts:ExternalId = fanout-demo-external-id; inline policy allowing
                 kinesis:PutRecord(s), DescribeStreamSummary, ListShards on the target stream.

Endpoints default to $FANOUT_KINESIS_ENDPOINT / $FANOUT_MOTO_ENDPOINT, then to the values in
.local/run/env (written by start.sh), then to http://127.0.0.1:4567 / :5000.
Existing resources are left as they are. --reset deletes and recreates the two streams and
empties the table and the bucket. Exit status is non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[2]
ENV_FILE = ROOT / ".local" / "run" / "env"
SECRET = "local-secret"  # emulators accept any secret
CLIENT_CONFIG = Config(
    retries={"max_attempts": 2, "mode": "standard"},
    connect_timeout=5,
    read_timeout=30,
    s3={"addressing_style": "path"},
)


def env_default(var: str, fallback: str) -> str:
    if os.environ.get(var):
        return os.environ[var]
    if ENV_FILE.is_file():
        for line in ENV_FILE.read_text().splitlines():
            line = line.strip()
            if line.startswith(f"export {var}="):
                return line.split("=", 1)[1]
    return fallback


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--kinesis-endpoint",
                   default=env_default("FANOUT_KINESIS_ENDPOINT", "http://127.0.0.1:4567"),
                   help="kinesis-local endpoint")
    p.add_argument("--moto-endpoint",
                   default=env_default("FANOUT_MOTO_ENDPOINT", "http://127.0.0.1:5000"),
                   help="moto server endpoint (DynamoDB, S3, IAM, STS)")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--new-account", default="123456789012")
    p.add_argument("--old-account", default="222222222222")
    p.add_argument("--source-stream", default="fanout-demo-source")
    p.add_argument("--source-shards", type=int, default=4)
    p.add_argument("--target-stream", default="fanout-demo-target")
    p.add_argument("--target-shards", type=int, default=3)
    p.add_argument("--table", default="fanout-state")
    p.add_argument("--bucket", default=None,
                   help="dead-letter bucket (default: fanout-dead-letters-NEW_ACCOUNT)")
    p.add_argument("--writer-role", default="fanout-writer")
    p.add_argument("--external-id", default="fanout-demo-external-id")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for streams to become ACTIVE / to go away")
    p.add_argument("--reset", action="store_true",
                   help="delete and recreate the demo streams; empty the table and bucket")
    p.add_argument("--json", action="store_true",
                   help="print only a JSON object of the ARNs and names")
    args = p.parse_args(argv)
    if args.bucket is None:
        args.bucket = f"fanout-dead-letters-{args.new_account}"
    return args


class Provisioner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.quiet = args.json
        self.target_arn = self.stream_arn(args.old_account, args.target_stream)
        self.source_arn = self.stream_arn(args.new_account, args.source_stream)
        self.role_arn = f"arn:aws:iam::{args.old_account}:role/{args.writer_role}"

    # -- helpers -------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def stream_arn(self, account: str, name: str) -> str:
        return f"arn:aws:kinesis:{self.a.region}:{account}:stream/{name}"

    def kinesis(self, account: str):
        # kinesis-local: the 12-digit access key id selects the account.
        return boto3.client("kinesis", endpoint_url=self.a.kinesis_endpoint,
                            region_name=self.a.region, aws_access_key_id=account,
                            aws_secret_access_key=SECRET, config=CLIENT_CONFIG)

    def moto(self, service: str, creds: dict | None = None):
        # moto: plain credentials are its default account (123456789012); other accounts
        # are reached through STS AssumeRole credentials.
        if creds is None:
            creds = {"aws_access_key_id": "testing", "aws_secret_access_key": SECRET}
        return boto3.client(service, endpoint_url=self.a.moto_endpoint,
                            region_name=self.a.region, config=CLIENT_CONFIG, **creds)

    def assume(self, role_arn: str, external_id: str | None = None) -> dict:
        kw = {"RoleArn": role_arn, "RoleSessionName": "fanout-provision"}
        if external_id is not None:
            kw["ExternalId"] = external_id
        c = self.moto("sts").assume_role(**kw)["Credentials"]
        return {"aws_access_key_id": c["AccessKeyId"],
                "aws_secret_access_key": c["SecretAccessKey"],
                "aws_session_token": c["SessionToken"]}

    def deadline_loop(self, what: str):
        deadline = time.monotonic() + self.a.timeout
        delay = 0.05
        while True:
            yield
            if time.monotonic() > deadline:
                raise SystemExit(f"provision.py: timed out after {self.a.timeout}s waiting for {what}")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- Kinesis ---------------------------------------------------------------------------
    def stream_status(self, client, arn: str) -> str | None:
        try:
            d = client.describe_stream_summary(StreamARN=arn)
        except ClientError as e:
            if e.response["Error"]["Code"] == "ResourceNotFoundException":
                return None
            raise
        return d["StreamDescriptionSummary"]["StreamStatus"]

    def delete_stream(self, account: str, name: str) -> None:
        k, arn = self.kinesis(account), self.stream_arn(account, name)
        if self.stream_status(k, arn) is None:
            return
        for _ in self.deadline_loop(f"{arn} to leave CREATING/UPDATING"):
            if self.stream_status(k, arn) in ("ACTIVE", None):
                break
        try:
            k.delete_stream(StreamARN=arn, EnforceConsumerDeletion=True)
        except ClientError as e:
            if e.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
        for _ in self.deadline_loop(f"{arn} to be deleted"):
            if self.stream_status(k, arn) is None:
                break
        self.log(f"reset:   deleted stream {arn}")

    def ensure_stream(self, account: str, name: str, shards: int) -> str:
        k, arn = self.kinesis(account), self.stream_arn(account, name)
        status = self.stream_status(k, arn)
        if status == "DELETING":
            for _ in self.deadline_loop(f"{arn} to finish deleting"):
                if self.stream_status(k, arn) is None:
                    break
            status = None
        if status is None:
            try:
                k.create_stream(StreamName=name, ShardCount=shards)
                self.log(f"created: stream {arn} ({shards} shards)")
            except ClientError as e:
                if e.response["Error"]["Code"] != "ResourceInUseException":
                    raise
        else:
            self.log(f"exists:  stream {arn}")
        for _ in self.deadline_loop(f"{arn} to become ACTIVE"):
            if self.stream_status(k, arn) == "ACTIVE":
                break
        got = k.describe_stream_summary(StreamARN=arn)["StreamDescriptionSummary"]
        if got["StreamARN"] != arn:
            raise SystemExit(f"provision.py: {name} came back as {got['StreamARN']}, expected {arn}")
        if got["OpenShardCount"] != shards:
            print(f"provision.py: warning: {arn} has {got['OpenShardCount']} open shards, "
                  f"not {shards} (use --reset to recreate it)", file=sys.stderr)
        return arn

    # -- DynamoDB, S3 (moto, new account) --------------------------------------------------
    def ensure_table(self) -> str:
        ddb, name = self.moto("dynamodb"), self.a.table
        try:
            ddb.create_table(
                TableName=name,
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                      {"AttributeName": "sk", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                           {"AttributeName": "sk", "KeyType": "RANGE"}],
                BillingMode="PAY_PER_REQUEST",
            )
            self.log(f"created: table {name}")
        except ClientError as e:
            if e.response["Error"]["Code"] != "ResourceInUseException":
                raise
            self.log(f"exists:  table {name}")
        ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})
        desc = ddb.describe_table(TableName=name)["Table"]
        keys = {k["AttributeName"]: k["KeyType"] for k in desc["KeySchema"]}
        if keys != {"pk": "HASH", "sk": "RANGE"}:
            raise SystemExit(f"provision.py: table {name} exists with key schema {keys}, "
                             "expected pk (HASH) + sk (RANGE)")
        return desc["TableArn"]

    def clear_table(self) -> None:
        ddb, name, n = self.moto("dynamodb"), self.a.table, 0
        try:
            pages = ddb.get_paginator("scan").paginate(
                TableName=name, ProjectionExpression="pk, sk")
            for page in pages:
                items = page["Items"]
                for i in range(0, len(items), 25):
                    reqs = [{"DeleteRequest": {"Key": {"pk": it["pk"], "sk": it["sk"]}}}
                            for it in items[i:i + 25]]
                    while reqs:
                        r = ddb.batch_write_item(RequestItems={name: reqs})
                        reqs = r.get("UnprocessedItems", {}).get(name, [])
                    n += len(items[i:i + 25])
        except ClientError as e:
            if e.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
        self.log(f"reset:   deleted {n} item(s) from table {name}")

    def ensure_bucket(self) -> str:
        s3, name = self.moto("s3"), self.a.bucket
        try:
            s3.head_bucket(Bucket=name)
            self.log(f"exists:  bucket {name}")
        except ClientError as e:
            if e.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
                raise
            kw = {"Bucket": name}
            if self.a.region != "us-east-1":
                kw["CreateBucketConfiguration"] = {"LocationConstraint": self.a.region}
            s3.create_bucket(**kw)
            self.log(f"created: bucket {name}")
        return f"arn:aws:s3:::{name}"

    def clear_bucket(self) -> None:
        s3, name, n = self.moto("s3"), self.a.bucket, 0
        try:
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
                objs = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                        for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
                for i in range(0, len(objs), 1000):
                    s3.delete_objects(Bucket=name, Delete={"Objects": objs[i:i + 1000], "Quiet": True})
                n += len(page.get("Versions", []))
            for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=name):
                for u in page.get("Uploads", []):
                    s3.abort_multipart_upload(Bucket=name, Key=u["Key"], UploadId=u["UploadId"])
        except ClientError as e:
            if e.response["Error"]["Code"] != "NoSuchBucket":
                raise
        self.log(f"reset:   deleted {n} object version(s) from bucket {name}")

    # -- IAM role in the old account (moto) ------------------------------------------------
    def ensure_writer_role(self) -> str:
        # moto's STS does not check that the role exists: assuming any role ARN in the old
        # account yields credentials that act in that account.
        admin = self.assume(f"arn:aws:iam::{self.a.old_account}:role/fanout-provisioner")
        iam = self.moto("iam", admin)
        trust = {
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{self.a.new_account}:root"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": self.a.external_id}},
            }],
        }
        policy = {
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Action": ["kinesis:PutRecord", "kinesis:PutRecords",
                           "kinesis:DescribeStreamSummary", "kinesis:ListShards"],
                "Resource": self.target_arn,
            }],
        }
        name = self.a.writer_role
        try:
            arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust),
                                  Description="fanout demo: writes to the old account's stream")["Role"]["Arn"]
            self.log(f"created: role {arn}")
        except ClientError as e:
            if e.response["Error"]["Code"] != "EntityAlreadyExists":
                raise
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
            arn = iam.get_role(RoleName=name)["Role"]["Arn"]
            self.log(f"exists:  role {arn} (trust policy re-applied)")
        iam.put_role_policy(RoleName=name, PolicyName="fanout-writer-kinesis",
                            PolicyDocument=json.dumps(policy))
        if arn != self.role_arn:
            raise SystemExit(f"provision.py: role came back as {arn}, expected {self.role_arn}")
        return arn

    def verify_writer_role(self) -> None:
        # This proves the account mapping only: moto's STS ignores trust policies and
        # external ids (a wrong or missing external id is accepted too).
        creds = self.assume(self.role_arn, self.a.external_id)
        ident = self.moto("sts", creds).get_caller_identity()
        if ident["Account"] != self.a.old_account:
            raise SystemExit(f"provision.py: assuming {self.role_arn} gave account "
                             f"{ident['Account']}, expected {self.a.old_account}")
        self.log(f"verified: AssumeRole {self.role_arn} (external id) -> {ident['Arn']}")

    # -- main ------------------------------------------------------------------------------
    def run(self) -> dict:
        a = self.a
        if a.reset:
            self.delete_stream(a.new_account, a.source_stream)
            self.delete_stream(a.old_account, a.target_stream)
        source = self.ensure_stream(a.new_account, a.source_stream, a.source_shards)
        target = self.ensure_stream(a.old_account, a.target_stream, a.target_shards)
        table_arn = self.ensure_table()
        bucket_arn = self.ensure_bucket()
        if a.reset:
            self.clear_table()
            self.clear_bucket()
        role = self.ensure_writer_role()
        self.verify_writer_role()
        result = {
            "source_stream_arn": source,
            "target_stream_arn": target,
            "table": a.table,
            "bucket": a.bucket,
            "writer_role_arn": role,
            "external_id": a.external_id,
        }
        if a.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"\nnew account {a.new_account}:")
            print(f"  source stream  {source}   ({a.kinesis_endpoint})")
            print(f"  table          {table_arn}   ({a.moto_endpoint})")
            print(f"  bucket         {bucket_arn}")
            print(f"old account {a.old_account}:")
            print(f"  target stream  {target}   (address it by ARN)")
            print(f"  writer role    {role}   (external id {a.external_id})")
        return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        os.environ.pop(var, None)  # never pick up a real profile by accident
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    try:
        Provisioner(args).run()
    except ClientError as e:
        print(f"provision.py: AWS call failed: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # connection refused and the like
        if type(e).__module__.startswith(("botocore", "urllib3")):
            print(f"provision.py: cannot reach an emulator ({e}); is infra/local/start.sh running?",
                  file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
