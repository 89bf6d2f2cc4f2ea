data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

# The controller: a Lambda function that runs one migration command per invocation (the same
# commands and JSON report as fanoutctl), and an on-call role that may invoke it or run
# fanoutctl itself with the same data permissions.

locals {
  source_arns = distinct([for r in var.routes : r.source_arn])
  target_arns = distinct([for r in var.routes : r.target_arn])

  # Same document as the replicator's FANOUT_ROUTES: "name" left out where the code's default applies.
  routes_json = jsonencode([
    for r in var.routes : {
      for k, v in { source = r.source_arn, target = r.target_arn, name = r.name } : k => v if v != null
    }
  ])

  # Every variable the function reads, and nothing else (scripts/terraform_check.py compares
  # these keys with the code). The replicator's settings are here because `start` parses the
  # same configuration. null = unset, so the code's own default applies.
  environment = {
    FANOUT_MIGRATION               = var.migration
    FANOUT_ROUTES                  = local.routes_json
    FANOUT_TABLE                   = var.table_name
    FANOUT_DEAD_LETTER_BUCKET      = var.bucket_name
    FANOUT_DEAD_LETTER_PREFIX      = var.dead_letter_prefix
    FANOUT_WRITER_ROLE_ARN         = var.writer_role_arn
    FANOUT_WRITER_EXTERNAL_ID      = var.writer_external_id
    FANOUT_OLD_CONSUMERS_ROLE_ARN  = var.old_consumers_role_arn
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
    FANOUT_CONSUMERS               = length(var.consumers) > 0 ? local.consumers_json : null
  }

  # The Lambda consumers `start` registers (fanoutctl consumers add takes the same fields).
  consumers_json = jsonencode([
    for c in var.consumers : {
      for k, v in {
        name              = c.name
        function          = c.function_arn
        stream            = c.stream_arn
        mapping           = c.mapping_uuid
        from_start        = c.from_start
        moves_to_function = c.moves_to_function
        lag_allowance     = c.lag_allowance
      } : k => v if v != null
    }
  ])
  # Consumers of the new streams have their mappings in this account; those of the old streams
  # in the old one, switched through writer-access's consumers role (old_consumers_role_arn).
  new_consumers          = [for c in var.consumers : c if contains(local.source_arns, c.stream_arn)]
  old_consumers          = [for c in var.consumers : c if !contains(local.source_arns, c.stream_arn)]
  consumer_function_arns = distinct([for c in local.new_consumers : c.function_arn])
  # The functions of this account that the commit gives a mapping on a new stream, for the
  # consumers of old streams that move.
  moved_function_arns = distinct([for c in local.old_consumers : c.moves_to_function if c.moves_to_function != null])
  # Every event source mapping of this account and region (mappings are named by UUID only;
  # the update statement is narrowed to the consumers' functions by lambda:FunctionArn).
  consumer_mappings = "arn:${data.aws_partition.current.partition}:lambda:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:event-source-mapping:*"

  # Whether the (sensitive) external id is set is not itself a secret. Deciding it here, rather
  # than filtering the map on each value, keeps only the external id hidden in plans instead of
  # the whole environment.
  external_id_set = nonsensitive(var.writer_external_id != null)
  environment_unset = concat(
    var.migration == null ? ["FANOUT_MIGRATION"] : [],
    var.writer_role_arn == null ? ["FANOUT_WRITER_ROLE_ARN"] : [],
    var.old_consumers_role_arn == null ? ["FANOUT_OLD_CONSUMERS_ROLE_ARN"] : [],
    local.external_id_set ? [] : ["FANOUT_WRITER_EXTERNAL_ID"],
    var.max_record_bytes == null ? ["FANOUT_MAX_RECORD_BYTES"] : [],
  )

  # The controller publishes routing/<migration>.json (src/control/commands.rs).
  routing_prefix = "routing"
  # Where Lambda writes the event source mapping's on-failure records (src/on_failure.rs).
  failure_records_prefix = "aws/lambda"

  oncall = length(var.oncall_principal_arns) > 0
}

# --- Logs ------------------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_158:Log lines carry command reports (states, guard results, identities), never record payloads; CloudWatch encrypts log data at rest by default, a customer key would add cost and a key policy to maintain for no gain.
  #checkov:skip=CKV_AWS_338:Operational logs, kept log_retention_days (default 30); every command attempt is also recorded in the state table's history items, kept forever. Raise log_retention_days if your policy requires a year.
  name              = "/aws/lambda/${var.function_name}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

# --- What both the controller and the on-call role may do ----------------------------------------
# fanoutctl run by an on-call engineer makes the same calls as the function, so both roles get
# this one document.
# sts:GetCallerIdentity (the identity recorded with every command) needs no grant: IAM cannot
# deny it.

data "aws_iam_policy_document" "migrate" {
  # Migration state and history, replication modes, heartbeats, checkpoints (read by the lag
  # guard), verifications and dead-letter acknowledgements. Every write is a PutItem.
  statement {
    sid = "StateTable"
    actions = [
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:Query",
      # an unknown migration's message lists the migrations in the table
      "dynamodb:Scan",
    ]
    resources = [var.table_arn]
  }

  statement {
    sid = "RoutingDocuments"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
    ]
    resources = ["${var.bucket_arn}/${local.routing_prefix}/*"]
  }

  # The dead-letter guard counts each route's dead letters, and the batches Lambda's event
  # source mappings discarded (their on-failure records, under aws/lambda/), by listing them.
  statement {
    sid       = "ListDeadLetters"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.dead_letter_prefix}/*", "aws/lambda/*"]
    }
  }

  # The lag guard reads the first unreplicated record of every shard; the streams guard
  # describes the new streams.
  statement {
    sid = "ReadSourceStreams"
    actions = [
      "kinesis:DescribeStreamSummary",
      "kinesis:GetRecords",
      "kinesis:GetShardIterator",
      "kinesis:ListShards",
    ]
    resources = local.source_arns
  }

  dynamic "statement" {
    for_each = length(var.source_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "DecryptSourceRecords"
      actions   = ["kms:Decrypt"]
      resources = var.source_kms_key_arns
    }
  }

  dynamic "statement" {
    for_each = var.state_kms_key_arn != null ? [1] : []
    content {
      sid = "RoutingDocumentsKey"
      actions = [
        "kms:Decrypt",
        "kms:GenerateDataKey",
      ]
      resources = [var.state_kms_key_arn]
    }
  }

  # The streams guard describes the old streams through the writer role.
  dynamic "statement" {
    for_each = var.writer_role_arn != null ? [1] : []
    content {
      sid       = "AssumeWriterRole"
      actions   = ["sts:AssumeRole"]
      resources = [var.writer_role_arn]
    }
  }

  # Resource-policy mode: the old streams are described directly, and their resource policies
  # must allow it too.
  dynamic "statement" {
    for_each = var.writer_role_arn == null ? [1] : []
    content {
      sid       = "DescribeTargetStreams"
      actions   = ["kinesis:DescribeStreamSummary"]
      resources = local.target_arns
    }
  }

  # Lambda consumers of the new streams: the flips switch their event source mappings on and
  # off, only those of the functions of `consumers` on new streams; the consumers guard and
  # `status` read them.
  dynamic "statement" {
    for_each = length(local.new_consumers) > 0 ? [1] : []
    content {
      sid       = "SwitchConsumerMappings"
      actions   = ["lambda:UpdateEventSourceMapping"]
      resources = [local.consumer_mappings]

      condition {
        test     = "ArnLike"
        variable = "lambda:FunctionArn"
        values   = local.consumer_function_arns
      }
    }
  }

  dynamic "statement" {
    for_each = length(local.new_consumers) > 0 ? [1] : []
    content {
      sid       = "ReadConsumerMappings"
      actions   = ["lambda:GetEventSourceMapping"]
      resources = [local.consumer_mappings]
    }
  }

  # ListEventSourceMappings has no resource to scope it to. `consumers add` finds a new
  # stream's consumer with it; the commit checks with it that a moving consumer has no
  # mapping on its new stream yet.
  dynamic "statement" {
    for_each = length(local.new_consumers) > 0 || length(local.moved_function_arns) > 0 ? [1] : []
    content {
      sid       = "FindConsumerMappings"
      actions   = ["lambda:ListEventSourceMappings"]
      resources = ["*"]
    }
  }

  # Consumers of the old streams that move (moves_to_function): the commit gives each function
  # a mapping on its new stream, starting where the old mapping stopped (from the position map:
  # the state table's checkpoints and position pairs, and the new stream's shards, both granted
  # above). CreateEventSourceMapping has no resource type: the statement is narrowed to those
  # functions by lambda:FunctionArn.
  dynamic "statement" {
    for_each = length(local.moved_function_arns) > 0 ? [1] : []
    content {
      sid       = "MoveOldConsumers"
      actions   = ["lambda:CreateEventSourceMapping"]
      resources = ["*"]

      condition {
        test     = "ArnLike"
        variable = "lambda:FunctionArn"
        values   = local.moved_function_arns
      }
    }
  }

  # Lambda consumers of the old streams: their mappings are in the old account, switched
  # (on until the commit, off at it) and read through writer-access's consumers role.
  dynamic "statement" {
    for_each = var.old_consumers_role_arn != null ? [1] : []
    content {
      sid       = "AssumeOldConsumersRole"
      actions   = ["sts:AssumeRole"]
      resources = [var.old_consumers_role_arn]
    }
  }

  # Resource-policy mode with reverse replication: the lag guard and `status` read the old
  # streams (the reverse routes' sources) directly; writer-access's stream policies allow it.
  dynamic "statement" {
    for_each = var.writer_role_arn == null && var.reverse_replication ? [1] : []
    content {
      sid = "ReadTargetStreamsForReverseLag"
      actions = [
        "kinesis:GetRecords",
        "kinesis:GetShardIterator",
        "kinesis:ListShards",
      ]
      resources = local.target_arns
    }
  }
}

# --- The controller's role -------------------------------------------------------------------------

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
  description           = "fanout controller: flips a migration's producers between accounts."
  assume_role_policy    = data.aws_iam_policy_document.assume.json
  force_detach_policies = true
  tags                  = var.tags
}

resource "aws_iam_role_policy" "migrate" {
  name   = "migrate"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.migrate.json
}

data "aws_iam_policy_document" "logs" {
  statement {
    sid = "WriteOwnLogs"
    actions = [
      "logs:CreateLogStream",
      "logs:PutLogEvents",
    ]
    resources = ["${aws_cloudwatch_log_group.this.arn}:*"]
  }
}

resource "aws_iam_role_policy" "logs" {
  name   = "logs"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.logs.json
}

# --- The function ------------------------------------------------------------------------------

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_50:X-Ray would need xray:PutTraceSegments and PutTelemetryRecords and the code emits no trace segments; every command's outcome, guards and timings are in its report and the history items.
  #checkov:skip=CKV_AWS_115:Invoked by hand, a few times per migration; concurrent flips are already serialised by a conditional write on the state item, and reserving concurrency would take it away from the account's other functions.
  #checkov:skip=CKV_AWS_116:Invoked by people, mostly synchronously; an asynchronous invocation (--invocation-type Event, then fanoutctl status --watch) is never retried and is dropped after 60 s in the queue (aws_lambda_function_event_invoke_config below), and every command attempt is in the history, so a DLQ would only hold commands nobody should run late.
  #checkov:skip=CKV_AWS_117:Reaches only AWS public endpoints (DynamoDB, S3, Kinesis, STS); a VPC would add NAT gateways or interface endpoints and cost without protecting anything.
  #checkov:skip=CKV_AWS_173:The environment holds no secret (the external id guards against a confused deputy and is not a credential); Lambda encrypts it at rest with an AWS managed key.
  #checkov:skip=CKV_AWS_272:The package is built from this repository by scripts/build-lambdas.sh and deployed by Terraform from that build; code signing would need a signing profile and pipeline this project does not have.
  function_name    = var.function_name
  description      = "fanout controller: migration commands (start, cutover, rollback, commit, ...)"
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

  # The function reads its identity and the old account's credentials at start-up: the grants
  # must be in place before the first invocation.
  depends_on = [aws_iam_role_policy.migrate, aws_iam_role_policy.logs]

  lifecycle {
    precondition {
      condition     = !local.external_id_set || var.writer_role_arn != null
      error_message = "writer_external_id is set without writer_role_arn: start would refuse the configuration. Set the writer role to assume, or leave the external id null."
    }

    # Event source mappings have no resource policy: a role in the old account is the only
    # way to reach the old streams' consumers (the writer role is not granted Lambda actions).
    precondition {
      condition     = length(local.old_consumers) == 0 || var.old_consumers_role_arn != null
      error_message = "consumers on old streams (${join(", ", [for c in local.old_consumers : c.name])}) need old_consumers_role_arn: writer-access's consumers_role_arn, with their functions in its consumer_function_arns. Their mappings are in the old account, which only a role there can switch."
    }

    # The commit creates the moved consumers' mappings in this account.
    precondition {
      condition     = alltrue([for f in local.moved_function_arns : split(":", f)[4] == data.aws_caller_identity.current.account_id])
      error_message = "Every consumer's moves_to_function must be a function of this (the new) account, ${data.aws_caller_identity.current.account_id}: the commit creates its mapping on the new stream here."
    }

    # Lambda allows 4 KB for all environment variables together.
    precondition {
      condition     = length(local.routes_json) <= 3500
      error_message = "FANOUT_ROUTES would be ${length(local.routes_json)} bytes; Lambda allows 4 KB for all environment variables together. Use shorter route names, or split the routes over two deployments."
    }
  }
}

# --- The on-call role ---------------------------------------------------------------------------

data "aws_iam_policy_document" "oncall_assume" {
  count = local.oncall ? 1 : 0

  statement {
    sid     = "OnCallEngineersAssumeTheRole"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "AWS"
      identifiers = var.oncall_principal_arns
    }

    dynamic "condition" {
      for_each = var.oncall_require_mfa ? [1] : []
      content {
        test     = "Bool"
        variable = "aws:MultiFactorAuthPresent"
        values   = ["true"]
      }
    }

    # The session name is the identity the controller records and the two-person rule
    # compares (arn:aws:sts::<account>:assumed-role/<role>/<session name>). Left free, one
    # person could request a flip in one session and approve it from another. This makes it
    # the caller's own IAM user name. `$${...}` is an IAM policy variable, not Terraform's.
    dynamic "condition" {
      for_each = var.oncall_session_name_is_username ? [1] : []
      content {
        test     = "StringEquals"
        variable = "sts:RoleSessionName"
        values   = ["$${aws:username}"]
      }
    }
  }

  lifecycle {
    # aws:username exists only for IAM users: a role's sessions would all be refused.
    precondition {
      condition     = !var.oncall_session_name_is_username || alltrue([for p in var.oncall_principal_arns : !can(regex(":role/", p))])
      error_message = "oncall_session_name_is_username = true requires sts:RoleSessionName to equal the caller's IAM user name, and a role's session has no user name, so every role in oncall_principal_arns would be refused. Trust IAM users (or the account root, for its users), or set it false and give engineers an IAM Identity Center permission set with the oncall_policy_json output instead (AWS names each of its sessions after the signed-in user): see the module README."
    }
  }
}

resource "aws_iam_role" "oncall" {
  count = local.oncall ? 1 : 0

  name                  = var.oncall_role_name
  description           = "fanout on-call: invoke the controller, or run every runbook command with fanoutctl."
  assume_role_policy    = data.aws_iam_policy_document.oncall_assume[0].json
  force_detach_policies = true
  tags                  = var.tags
}

resource "aws_iam_role_policy" "oncall_migrate" {
  count = local.oncall ? 1 : 0

  name   = "migrate"
  role   = aws_iam_role.oncall[0].id
  policy = data.aws_iam_policy_document.migrate.json
}

# What only the on-call role does: invoke the controller, and the runbook commands the function
# never runs (verify, redrive, consumers move). scripts/terraform_check.py checks this document
# and `migrate` against every runbook command's AWS calls.
data "aws_iam_policy_document" "operate" {
  # `aws lambda invoke`. Function URLs need this action too (since October 2025).
  statement {
    sid       = "InvokeController"
    actions   = ["lambda:InvokeFunction"]
    resources = [aws_lambda_function.this.arn]
  }

  # The function URL (SigV4-signed requests): the function learns who called from the request,
  # so a two-person approval can be taken there and not from a direct invoke.
  statement {
    sid       = "InvokeControllerUrl"
    actions   = ["lambda:InvokeFunctionUrl"]
    resources = [aws_lambda_function.this.arn]

    condition {
      test     = "StringEquals"
      variable = "lambda:FunctionUrlAuthType"
      values   = ["AWS_IAM"]
    }
  }

  # `dlq ack` is for dead letters someone has looked at; this is how they look. `verify`
  # reads them to tell dead-lettered records from missing ones; `redrive` reads each, deletes
  # it once its record is written (or, with --keep, writes a `.redriven` marker beside it), and
  # with --on-failure stores the records of discarded batches as dead letters. The function
  # itself never reads one, so only the on-call role has this.
  statement {
    sid = "RedriveDeadLetters"
    actions = [
      "s3:DeleteObject",
      "s3:GetObject",
      "s3:PutObject",
    ]
    resources = ["${var.bucket_arn}/${var.dead_letter_prefix}/*"]
  }

  # `redrive --on-failure`: reads each batch the event source mapping discarded (its
  # on-failure record) and deletes it once its records are stored as dead letters.
  statement {
    sid = "RedriveDiscardedBatches"
    actions = [
      "s3:DeleteObject",
      "s3:GetObject",
    ]
    resources = ["${var.bucket_arn}/${local.failure_records_prefix}/*"]
  }

  dynamic "statement" {
    for_each = var.state_kms_key_arn != null ? [1] : []
    content {
      sid = "DeadLettersKey"
      actions = [
        "kms:Decrypt",
        "kms:GenerateDataKey",
      ]
      resources = [var.state_kms_key_arn]
    }
  }

  # Role mode: `fanoutctl verify --target-role-arn <reader role>` reads the old streams through
  # writer-access's read role (the writer role may not read them).
  dynamic "statement" {
    for_each = var.reader_role_arn != null ? [1] : []
    content {
      sid       = "AssumeReaderRole"
      actions   = ["sts:AssumeRole"]
      resources = [var.reader_role_arn]
    }
  }

  # `fanoutctl consumers move --kcl-role-arn <role>` rewrites a KCL application's lease table,
  # the application's own (often in another account): its owners give a role with the table's
  # dynamodb:Scan, PutItem and DeleteItem that trusts the on-call role. Both access modes.
  dynamic "statement" {
    for_each = length(var.kcl_role_arns) > 0 ? [1] : []
    content {
      sid       = "AssumeKclRoles"
      actions   = ["sts:AssumeRole"]
      resources = var.kcl_role_arns
    }
  }

  # Resource-policy mode: no role to assume, so the on-call role itself reads the old streams
  # (verify) and writes them (redrive); the streams' resource policies must allow it too
  # (writer-access's trusted_role_arns and reader_trusted_role_arns).
  dynamic "statement" {
    for_each = var.writer_role_arn == null ? [1] : []
    content {
      sid = "RedriveIntoTargetStreams"
      actions = [
        "kinesis:DescribeStreamSummary",
        "kinesis:ListShards",
        "kinesis:PutRecords",
      ]
      resources = local.target_arns
    }
  }

  dynamic "statement" {
    for_each = var.writer_role_arn == null ? [1] : []
    content {
      sid = "VerifyTargetStreams"
      actions = [
        "kinesis:GetRecords",
        "kinesis:GetShardIterator",
        "kinesis:ListShards",
      ]
      resources = local.target_arns
    }
  }

  dynamic "statement" {
    for_each = var.writer_role_arn == null && length(var.target_kms_key_arns) > 0 ? [1] : []
    content {
      sid = "TargetRecordsKeys"
      actions = [
        "kms:Decrypt",
        "kms:GenerateDataKey",
      ]
      resources = var.target_kms_key_arns
    }
  }
}

resource "aws_iam_role_policy" "oncall_operate" {
  count = local.oncall ? 1 : 0

  name   = "operate"
  role   = aws_iam_role.oncall[0].id
  policy = data.aws_iam_policy_document.operate.json
}

# The on-call role's permissions as one document, for an IAM Identity Center permission set
# (oncall_session_name_is_username = false: see the README).
data "aws_iam_policy_document" "oncall" {
  source_policy_documents = [
    data.aws_iam_policy_document.migrate.json,
    data.aws_iam_policy_document.operate.json,
  ]
}

# --- The function URL ------------------------------------------------------------------------------
# IAM-authenticated: every request is SigV4-signed and Lambda passes the caller's identity to
# the function (requestContext.authorizer.iam), which is what lets it take a two-person
# approval. A direct invoke carries only the function's own identity.

resource "aws_lambda_function_url" "this" {
  function_name      = aws_lambda_function.this.function_name
  authorization_type = "AWS_IAM"
}

# An asynchronous invocation (`aws lambda invoke --invocation-type Event`) is run once or not at
# all: Lambda would otherwise retry a flip that failed or timed out twice more, and run one
# that waited in its queue up to 6 hours later.
resource "aws_lambda_function_event_invoke_config" "this" {
  function_name                = aws_lambda_function.this.function_name
  maximum_retry_attempts       = 0
  maximum_event_age_in_seconds = 60
}

# --- The sweep ------------------------------------------------------------------------------------
# A flip whose process died (no sign of life for 15 s) is released by the next command on its
# migration, `status` included. With nobody running one, producers would stay held: this runs
# `status` on the migration every few minutes so that they are released within that time.

locals {
  sweep = var.migration != null && var.abandoned_flip_sweep_minutes > 0
}

resource "aws_cloudwatch_event_rule" "sweep" {
  count = local.sweep ? 1 : 0

  name                = "${var.function_name}-sweep"
  description         = "fanout: release a flip of ${var.migration} whose process died (runs the controller's status)."
  schedule_expression = var.abandoned_flip_sweep_minutes == 1 ? "rate(1 minute)" : "rate(${var.abandoned_flip_sweep_minutes} minutes)"
  tags                = var.tags
}

resource "aws_cloudwatch_event_target" "sweep" {
  count = local.sweep ? 1 : 0

  rule  = aws_cloudwatch_event_rule.sweep[0].name
  arn   = aws_lambda_function.this.arn
  input = jsonencode({ command = "status", migration = var.migration })
}

resource "aws_lambda_permission" "sweep" {
  count = local.sweep ? 1 : 0

  statement_id  = "SweepAbandonedFlips"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.this.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.sweep[0].arn
}
