# The replicator: one Lambda function fed by one Kinesis event source mapping per source
# stream of the new account. It writes every record to the route's target stream in the old
# account, keeps a forward-only checkpoint per (route, shard) in the state table, and stores
# records that can never be written as dead letters in the state bucket.

locals {
  source_arns = distinct([for r in var.routes : r.source_arn])
  target_arns = distinct([for r in var.routes : r.target_arn])

  # The name the code gives a route when none is set (src/model.rs, Route::default_name):
  # <source stream name>--<target account id>--<target stream name>.
  route_names = [
    for r in var.routes : r.name != null ? r.name : format(
      "%s--%s--%s",
      split("/", r.source_arn)[1],
      split(":", r.target_arn)[4],
      split("/", r.target_arn)[1],
    )
  ]

  # "name" is left out of a route that has none, and "order" of a strict route, so the code's
  # defaults apply (and FANOUT_ROUTES stays short: Lambda allows 4 KB for all variables).
  routes_json = jsonencode([
    for r in var.routes : {
      for k, v in {
        source = r.source_arn
        target = r.target_arn
        name   = r.name
        order  = r.order == "strict" ? null : r.order
      } : k => v if v != null
    }
  ])

  # Every variable the function reads, and nothing else (scripts/terraform_check.py compares
  # these keys with the code). null = unset, so the code's own default applies.
  environment = {
    FANOUT_ROUTES                  = local.routes_json
    FANOUT_TABLE                   = var.table_name
    FANOUT_DEAD_LETTER_BUCKET      = var.bucket_name
    FANOUT_DEAD_LETTER_PREFIX      = var.dead_letter_prefix
    FANOUT_WRITER_ROLE_ARN         = var.writer_role_arn
    FANOUT_WRITER_EXTERNAL_ID      = var.writer_external_id
    FANOUT_METRICS_NAMESPACE       = var.metrics_namespace
    FANOUT_MODE_CACHE_MS           = tostring(var.mode_cache_ms)
    FANOUT_POSITION_EVERY_MS       = tostring(var.position_every_ms)
    FANOUT_AWS_TIMEOUT             = "${var.aws_call_timeout_ms}ms"
    FANOUT_MAX_REQUEST_ENTRIES     = tostring(var.max_request_entries)
    FANOUT_MAX_REQUEST_BYTES       = tostring(var.max_request_bytes)
    FANOUT_MAX_RECORD_BYTES        = var.max_record_bytes == null ? null : tostring(var.max_record_bytes)
    FANOUT_MAX_CONCURRENT_REQUESTS = tostring(var.max_concurrent_requests)
    FANOUT_BACKOFF_BASE_MS         = tostring(var.backoff_base_ms)
    FANOUT_BACKOFF_MAX_MS          = tostring(var.backoff_max_ms)
    FANOUT_DEADLINE_MARGIN_MS      = tostring(var.deadline_margin_ms)
    FANOUT_REQUEST_TIMEOUT_MS      = tostring(var.request_timeout_ms)
    FANOUT_SHARD_RECORDS_PER_SEC   = tostring(var.shard_records_per_sec)
    FANOUT_SHARD_BYTES_PER_SEC     = tostring(var.shard_bytes_per_sec)
    FANOUT_SHARD_HEADROOM_PCT      = tostring(var.shard_headroom_pct)
    FANOUT_RUN_LENGTH              = tostring(var.run_length)
    FANOUT_LOG                     = var.log_level
  }

  # Whether the (sensitive) external id is set is not itself a secret. Deciding it here, rather
  # than filtering the map on each value, keeps only the external id hidden in plans instead of
  # the whole environment.
  external_id_set = nonsensitive(var.writer_external_id != null)
  environment_unset = concat(
    var.writer_role_arn == null ? ["FANOUT_WRITER_ROLE_ARN"] : [],
    local.external_id_set ? [] : ["FANOUT_WRITER_EXTERNAL_ID"],
    var.max_record_bytes == null ? ["FANOUT_MAX_RECORD_BYTES"] : [],
  )

  consumer_name = coalesce(var.consumer_name, var.function_name)

  # Where Lambda writes a record of a batch it gave up on (S3 on-failure destination):
  # aws/lambda/<mapping UUID>/<shard id>/YYYY/MM/DD/<time>-<uuid>.
  failure_records_prefix = "aws/lambda"
}

# --- Logs ------------------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_158:Log lines carry route names, shard ids and error messages, never record payloads (those go to S3 dead letters); CloudWatch encrypts log data at rest by default, a customer key would add cost and a key policy to maintain for no gain.
  #checkov:skip=CKV_AWS_338:Operational logs, kept log_retention_days (default 30); the audit trail of flips is the state table's history items, kept forever. Raise log_retention_days if your policy requires a year.
  name              = "/aws/lambda/${var.function_name}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

# --- IAM ---------------------------------------------------------------------------------------

data "aws_iam_policy_document" "assume" {
  statement {
    sid     = "LambdaAssumesTheRole"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "this" {
  name                  = var.function_name
  description           = "fanout replicator: reads the new account's source streams, writes the old account's streams."
  assume_role_policy    = data.aws_iam_policy_document.assume.json
  force_detach_policies = true
  tags                  = var.tags
}

data "aws_iam_policy_document" "replicator" {
  # The event source mapping reads the shards with the function's role.
  statement {
    sid = "ReadSourceStreams"
    actions = [
      "kinesis:DescribeStream",
      "kinesis:DescribeStreamSummary",
      "kinesis:GetRecords",
      "kinesis:GetShardIterator",
      "kinesis:ListShards",
    ]
    resources = local.source_arns
  }

  dynamic "statement" {
    for_each = var.enhanced_fan_out ? [1] : []
    content {
      sid = "ReadThroughFanOutConsumers"
      actions = [
        "kinesis:DescribeStreamConsumer",
        "kinesis:SubscribeToShard",
      ]
      resources = [for c in aws_kinesis_stream_consumer.this : c.arn]
    }
  }

  dynamic "statement" {
    for_each = length(var.source_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "DecryptSourceRecords"
      actions   = ["kms:Decrypt"]
      resources = var.source_kms_key_arns
    }
  }

  # Checkpoints (GetItem, UpdateItem), replication modes (GetItem) and shard heartbeats
  # (PutItem). The replicator never queries the table.
  statement {
    sid = "StateTable"
    actions = [
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
    ]
    resources = [var.table_arn]
  }

  statement {
    sid       = "WriteDeadLetters"
    actions   = ["s3:PutObject"]
    resources = ["${var.bucket_arn}/${var.dead_letter_prefix}/*"]
  }

  # What Lambda needs to use the bucket as the mappings' on-failure destination. Only reached
  # with finite retry settings; see maximum_retry_attempts.
  statement {
    sid       = "WriteFailureRecords"
    actions   = ["s3:PutObject"]
    resources = ["${var.bucket_arn}/${local.failure_records_prefix}/*"]
  }

  # AWS documents s3:ListBucket on the destination bucket without saying which prefix Lambda
  # lists, so a prefix condition here could break the destination unnoticed.
  statement {
    sid       = "FindFailureDestination"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]
  }

  dynamic "statement" {
    for_each = var.state_kms_key_arn != null ? [1] : []
    content {
      sid       = "EncryptStateObjects"
      actions   = ["kms:GenerateDataKey"]
      resources = [var.state_kms_key_arn]
    }
  }

  # Role mode: the writer role in the old account holds the write grants.
  dynamic "statement" {
    for_each = var.writer_role_arn != null ? [1] : []
    content {
      sid       = "AssumeWriterRole"
      actions   = ["sts:AssumeRole"]
      resources = [var.writer_role_arn]
    }
  }

  # Resource-policy mode: this role writes, and each target stream's resource policy must
  # allow it as well. DescribeStreamSummary reads the record size limit, ListShards the shard
  # map that per-shard pacing follows (without it the replicator writes unpaced and logs a WARN).
  dynamic "statement" {
    for_each = var.writer_role_arn == null ? [1] : []
    content {
      sid = "WriteTargetStreams"
      actions = [
        "kinesis:DescribeStreamSummary",
        "kinesis:ListShards",
        "kinesis:PutRecords",
      ]
      resources = local.target_arns
    }
  }

  dynamic "statement" {
    for_each = var.writer_role_arn == null && length(var.target_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "EncryptTargetRecords"
      actions   = ["kms:GenerateDataKey"]
      resources = var.target_kms_key_arns
    }
  }

  statement {
    sid = "WriteOwnLogs"
    actions = [
      "logs:CreateLogStream",
      "logs:PutLogEvents",
    ]
    resources = ["${aws_cloudwatch_log_group.this.arn}:*"]
  }
}

resource "aws_iam_role_policy" "this" {
  name   = "replicate"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.replicator.json
}

# --- The function ------------------------------------------------------------------------------

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_50:X-Ray would need xray:PutTraceSegments and PutTelemetryRecords and the code emits no trace segments; latency and retries are in the EMF metrics (BatchDuration, Retries).
  #checkov:skip=CKV_AWS_115:Concurrency follows the source shards (one invocation per shard, parallelization factor 1); a reserved cap below the shard count would throttle shards and grow replication lag.
  #checkov:skip=CKV_AWS_116:Invoked synchronously by the event source mapping, never asynchronously, so a function DLQ would never receive anything; failed batches are retried by the mapping and undeliverable records are dead-lettered to S3 by the code.
  #checkov:skip=CKV_AWS_117:Reaches only AWS public endpoints (Kinesis, DynamoDB, S3, STS); a VPC would add NAT gateways or interface endpoints and cost without protecting anything.
  #checkov:skip=CKV_AWS_173:The environment holds no secret (the external id guards against a confused deputy and is not a credential); Lambda encrypts it at rest with an AWS managed key.
  #checkov:skip=CKV_AWS_272:The package is built from this repository by scripts/build-lambdas.sh and deployed by Terraform from that build; code signing would need a signing profile and pipeline this project does not have.
  function_name    = var.function_name
  description      = "fanout replicator: new-account Kinesis streams into the old account's"
  role             = aws_iam_role.this.arn
  filename         = var.package_path
  source_code_hash = filebase64sha256(var.package_path)
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.architecture]
  memory_size      = var.memory_size
  timeout          = var.timeout_seconds

  environment {
    variables = { for k, v in local.environment : k => v if !contains(local.environment_unset, k) }
  }

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.this.name
  }

  tags = var.tags

  # The first invocations must find the role's grants in place.
  depends_on = [aws_iam_role_policy.this]

  lifecycle {
    precondition {
      condition     = !local.external_id_set || var.writer_role_arn != null
      error_message = "writer_external_id is set without writer_role_arn: the function would refuse to start. Set the writer role to assume, or leave the external id null."
    }

    precondition {
      condition     = var.timeout_seconds * 1000 > var.deadline_margin_ms + 5000
      error_message = "timeout_seconds leaves too little time: the write path stops deadline_margin_ms before the deadline, so the timeout must exceed that margin by at least 5 seconds."
    }

    precondition {
      condition     = length(distinct(local.route_names)) == length(local.route_names)
      error_message = "Two routes end up with the same name (route names key checkpoints and must be unique): give them distinct name values."
    }

    # Lambda allows 4 KB for all environment variables together.
    precondition {
      condition     = length(local.routes_json) <= 3500
      error_message = "FANOUT_ROUTES would be ${length(local.routes_json)} bytes; Lambda allows 4 KB for all environment variables together. Use shorter route names, or split the routes over two replicator deployments."
    }
  }
}

# --- Reading the source streams -----------------------------------------------------------------

resource "aws_kinesis_stream_consumer" "this" {
  for_each = var.enhanced_fan_out ? toset(local.source_arns) : toset([])

  name       = local.consumer_name
  stream_arn = each.key
}

resource "aws_lambda_event_source_mapping" "this" {
  for_each = toset(local.source_arns)

  function_name    = aws_lambda_function.this.arn
  event_source_arn = var.enhanced_fan_out ? aws_kinesis_stream_consumer.this[each.key].arn : each.key
  enabled          = var.event_source_mapping_enabled

  starting_position           = var.starting_position
  starting_position_timestamp = var.starting_position == "AT_TIMESTAMP" ? var.starting_position_timestamp : null

  batch_size                         = var.batch_size
  maximum_batching_window_in_seconds = var.maximum_batching_window_in_seconds
  # Must stay 1: see the variable's description.
  parallelization_factor = var.parallelization_factor

  # The replicator answers with the first record it did not handle; the mapping resumes there.
  # Hold mode relies on this: it reports the batch's first record and writes nothing.
  function_response_types = ["ReportBatchItemFailures"]

  # -1 and -1 (the defaults) retry until the records expire from the stream, so held records
  # wait in the source however long a pause lasts.
  maximum_retry_attempts         = var.maximum_retry_attempts
  maximum_record_age_in_seconds  = var.maximum_record_age_in_seconds
  bisect_batch_on_function_error = var.bisect_batch_on_function_error

  destination_config {
    on_failure {
      destination_arn = var.bucket_arn
    }
  }

  tags = var.tags

  # Lambda checks the role's read grants when it creates the mapping.
  depends_on = [aws_iam_role_policy.this]

  lifecycle {
    precondition {
      condition     = var.starting_position != "AT_TIMESTAMP" || var.starting_position_timestamp != null
      error_message = "starting_position is AT_TIMESTAMP but starting_position_timestamp is null: give the RFC 3339 time to start from, e.g. \"2026-12-01T10:00:00Z\"."
    }
  }
}
