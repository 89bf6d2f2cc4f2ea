"""Sets up a Lambda consumer of a stream on moto, for tests/control/consumers.rs: an IAM role,
a function created from a zip (moto stores it without Docker), the stream itself (moto's
Lambda accepts an event source only from its own Kinesis: the test's streams live on
kinesis-local, so a stream of the same name is created here too), and an event source
mapping, created disabled, that reads it from the trim horizon. Prints the mapping's UUID and
the function's ARN as JSON.

usage: lambda_consumer.py ENDPOINT STREAM_NAME FUNCTION_NAME
"""

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
    endpoint, stream, function = sys.argv[1:4]
    kw = dict(endpoint_url=endpoint, region_name="us-east-1",
              aws_access_key_id="123456789012", aws_secret_access_key="local")
    iam, lam, kinesis = (boto3.client(s, **kw) for s in ("iam", "lambda", "kinesis"))
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}
    role = iam.create_role(RoleName=f"{function}-role",
                           AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\n")
    arn = lam.create_function(FunctionName=function, Runtime="provided.al2023", Role=role,
                              Handler="bootstrap", Code={"ZipFile": code.getvalue()})["FunctionArn"]
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    stream_arn = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamARN"]
    uuid = lam.create_event_source_mapping(EventSourceArn=stream_arn, FunctionName=function,
                                           StartingPosition="TRIM_HORIZON", BatchSize=100,
                                           Enabled=False)["UUID"]
    print(json.dumps({"mapping": uuid, "function": arn, "stream": stream_arn}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
