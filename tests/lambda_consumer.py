"""Sets up a Lambda consumer of a stream on moto, for tests/control/consumers: an IAM role,
a function created from a zip (moto stores it without Docker), the stream itself (moto's
Lambda accepts an event source only from its own Kinesis: the test's streams live on
kinesis-local, so a stream of the same name is created here too), and an event source
mapping that reads it from the trim horizon, created disabled unless --enabled. Prints the
mapping's UUID (null with --no-mapping), the function's ARN and the stream's ARN as JSON.

usage: lambda_consumer.py ENDPOINT STREAM_NAME FUNCTION_NAME [--role ROLE_ARN] [--enabled]
                          [--no-mapping]
  --role ROLE_ARN  create everything in the account of ROLE_ARN (assumed through moto's STS:
                   the old account)
"""

import argparse
import io
import json
import sys
import zipfile

try:
    import boto3
except ImportError as e:  # the local stack's venv is missing
    print(f"boto3 is missing: {e}", file=sys.stderr)
    sys.exit(3)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("endpoint")
    p.add_argument("stream")
    p.add_argument("function")
    p.add_argument("--role")
    p.add_argument("--enabled", action="store_true")
    p.add_argument("--no-mapping", action="store_true")
    a = p.parse_args()
    kw = dict(endpoint_url=a.endpoint, region_name="us-east-1",
              aws_access_key_id="123456789012", aws_secret_access_key="local")
    if a.role:
        creds = boto3.client("sts", **kw).assume_role(
            RoleArn=a.role, RoleSessionName="lambda-consumer")["Credentials"]
        kw.update(aws_access_key_id=creds["AccessKeyId"],
                  aws_secret_access_key=creds["SecretAccessKey"],
                  aws_session_token=creds["SessionToken"])
    iam, lam, kinesis = (boto3.client(s, **kw) for s in ("iam", "lambda", "kinesis"))
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}
    role = iam.create_role(RoleName=f"{a.function}-role",
                           AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\n")
    arn = lam.create_function(FunctionName=a.function, Runtime="provided.al2023", Role=role,
                              Handler="bootstrap", Code={"ZipFile": code.getvalue()})["FunctionArn"]
    try:
        kinesis.create_stream(StreamName=a.stream, ShardCount=1)
    except kinesis.exceptions.ResourceInUseException:
        pass  # another consumer of the same stream made it
    stream_arn = kinesis.describe_stream_summary(StreamName=a.stream)["StreamDescriptionSummary"]["StreamARN"]
    uuid = None
    if not a.no_mapping:
        uuid = lam.create_event_source_mapping(EventSourceArn=stream_arn, FunctionName=a.function,
                                               StartingPosition="TRIM_HORIZON", BatchSize=100,
                                               Enabled=a.enabled)["UUID"]
    print(json.dumps({"mapping": uuid, "function": arn, "stream": stream_arn}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
