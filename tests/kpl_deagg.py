"""Deaggregates Kinesis records with AWS's Python deaggregator, for tests/kpl.rs.

Reads JSON lines on stdin, one Kinesis record each: {"data": base64, "partition_key": str}.
Writes JSON lines on stdout, one user record each, in order:
{"partition_key": str, "explicit_hash_key": str or null, "data": base64}.
A record that is not aggregated comes out as it went in, as the deaggregator leaves it.

The deaggregator is aws_kinesis_agg (the Python 3 successor of aws_kpl_deagg), installed in
the local venv by infra/local/install.sh. Exit status 3 means it is not installed.
"""

import base64
import importlib.util
import json
import sys

if importlib.util.find_spec("aws_kinesis_agg") is None:
    print(f"aws_kinesis_agg is not installed in {sys.prefix}", file=sys.stderr)
    sys.exit(3)

# deaggregator first: it puts its own folder on sys.path, where messages_pb2 finds config_pb2.
from aws_kinesis_agg.deaggregator import deaggregate_records  # noqa: E402
from aws_kinesis_agg import messages_pb2  # noqa: E402


def lambda_record(seq, line):
    """One record shaped as in a Lambda Kinesis event, which is what the deaggregator takes."""
    return {
        "eventSource": "aws:kinesis",
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": line["partition_key"],
            "sequenceNumber": str(seq),
            "data": line["data"],
            "approximateArrivalTimestamp": 1700000000.0,
        },
    }


def has_ehk_index(raw_b64, sub_seq):
    """Whether the sub-record carries an explicit hash key index.

    The deaggregator reads a missing index as 0 (the proto2 default) and reports the table's
    first key whenever the table is non-empty; the KCL checks presence (hasExplicitHashKeyIndex).
    Presence is read here with the package's own protobuf schema, so a sub-record without an
    explicit hash key is reported as the KCL sees it.
    """
    data = base64.b64decode(raw_b64)
    message = messages_pb2.AggregatedRecord()
    message.ParseFromString(data[4:-16])
    return message.records[sub_seq].HasField("explicit_hash_key_index")


def main():
    inputs = [json.loads(line) for line in sys.stdin if line.strip()]
    records = [lambda_record(i, line) for i, line in enumerate(inputs)]
    for user in deaggregate_records(records):
        k = user["kinesis"]
        data = k["data"]
        if isinstance(data, bytes):
            data = data.decode("ascii")
        ehk = k.get("explicitHashKey")
        if k.get("aggregated"):
            raw = inputs[int(k["sequenceNumber"])]["data"]
            if not has_ehk_index(raw, k["subSequenceNumber"]):
                ehk = None
        out = {"partition_key": k["partitionKey"], "explicit_hash_key": ehk, "data": data}
        print(json.dumps(out))


if __name__ == "__main__":
    main()
