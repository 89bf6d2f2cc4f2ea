data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  # Every call the code makes on the old streams (src/aws/target.rs: DescribeStreamSummary for
  # the record size limit, ListShards for the shard map that per-shard pacing follows,
  # PutRecords to write; src/aws/control.rs: DescribeStreamSummary for the controller's
  # `streams` guard). Both modes grant exactly this list.
  writer_actions = [
    "kinesis:PutRecords",
    "kinesis:DescribeStreamSummary",
    "kinesis:ListShards",
  ]

  # With reverse replication (`fanoutctl start --reverse`), the controller's lag guard and
  # `fanoutctl status` read the old streams' shards (src/aws/control.rs through
  # src/aws/source.rs) while the migration is rolled back. ListShards is in writer_actions
  # too; `distinct` below grants it once.
  reverse_read_actions = [
    "kinesis:ListShards",
    "kinesis:GetShardIterator",
    "kinesis:GetRecords",
  ]
  granted_actions = distinct(concat(local.writer_actions, var.reverse_replication ? local.reverse_read_actions : []))

  # What `fanoutctl verify` calls on the old streams (src/verify/read.rs through
  # src/aws/source.rs): it reads every shard of the target over the window; `positions
  # translate` and `consumers move` list their shards and (for a multi-stream KCL lease key)
  # read their creation time. Granted only to reader_trusted_role_arns (the on-call role),
  # never to the writers.
  reader_actions = [
    "kinesis:ListShards",
    "kinesis:GetShardIterator",
    "kinesis:GetRecords",
    "kinesis:DescribeStreamSummary",
  ]
  reader = length(var.reader_trusted_role_arns) > 0

  role_mode            = var.access_mode == "role"
  resource_policy_mode = var.access_mode == "resource_policy"

  # Lambda consumers of the old streams (their event source mappings in this account): the
  # flips keep them on until the commit and switch them off at it; the consumers guard,
  # `status` and `fanoutctl consumers add` find and read them (src/aws/lambda.rs `Mappings`,
  # with FANOUT_OLD_CONSUMERS_ROLE_ARN). A role in both access modes: event source mappings
  # have no resource policy.
  consumers = length(var.consumer_function_arns) > 0
  # In role mode the code assumes this role with FANOUT_WRITER_EXTERNAL_ID, as it does the
  # writer role; in resource-policy mode it has no external id (the controller module refuses
  # one without a writer role) and assumes the role without one. Whether the external id is
  # set is not itself a secret.
  consumers_external_id = local.role_mode && nonsensitive(var.external_id != null)
  # Every event source mapping of this account and region (mappings are named by UUID only;
  # the update statement is narrowed to the consumers' functions by lambda:FunctionArn).
  consumer_mappings = "arn:${data.aws_partition.current.partition}:lambda:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:event-source-mapping:*"
}

# ---------------------------------------------------------------------------------------------
# access_mode = "role": a role in the old account that the new account's roles assume.
# ---------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "trust" {
  count = local.role_mode ? 1 : 0

  statement {
    sid     = "AssumeFromNewAccountWithExternalId"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "AWS"
      identifiers = var.trusted_role_arns
    }

    # Being a trusted role is not enough: the caller must also present the external ID. That
    # ties the trust to fanout's own configuration
    # (FANOUT_WRITER_EXTERNAL_ID) rather than to anything else that runs under those roles.
    condition {
      test     = "StringEquals"
      variable = "sts:ExternalId"
      values   = [var.external_id]
    }
  }

  lifecycle {
    precondition {
      condition     = var.external_id != null
      error_message = "access_mode = \"role\" needs external_id: the trust policy only admits callers that present it."
    }
  }
}

resource "aws_iam_role" "writer" {
  count = local.role_mode ? 1 : 0

  name                 = var.role_name
  description          = "fanout: lets the new account's replicator and controller write to the migrated Kinesis streams in this account."
  assume_role_policy   = data.aws_iam_policy_document.trust[0].json
  max_session_duration = 3600

  tags = var.tags
}

data "aws_iam_policy_document" "write" {
  count = local.role_mode ? 1 : 0

  statement {
    sid       = "ReplicateIntoTargetStreams"
    effect    = "Allow"
    actions   = local.granted_actions
    resources = var.stream_arns
  }
}

resource "aws_iam_role_policy" "write" {
  count = local.role_mode ? 1 : 0

  name   = "write-target-streams"
  role   = aws_iam_role.writer[0].id
  policy = data.aws_iam_policy_document.write[0].json
}

# A separate policy, present only when there are keys: a statement with no resources is not a
# valid policy.
data "aws_iam_policy_document" "encrypt" {
  count = local.role_mode && length(var.kms_key_arns) > 0 ? 1 : 0

  statement {
    sid       = "EncryptRecordsForTargetStreams"
    effect    = "Allow"
    actions   = var.reverse_replication ? ["kms:GenerateDataKey", "kms:Decrypt"] : ["kms:GenerateDataKey"]
    resources = var.kms_key_arns
  }
}

resource "aws_iam_role_policy" "encrypt" {
  count = local.role_mode && length(var.kms_key_arns) > 0 ? 1 : 0

  name   = "encrypt-for-target-streams"
  role   = aws_iam_role.writer[0].id
  policy = data.aws_iam_policy_document.encrypt[0].json
}

# The read role (access_mode = "role", reader_trusted_role_arns set): what on-call engineers
# assume to compare the old streams with the new ones. No external id: it is assumed by named
# roles of the new account (the on-call role, itself gated by MFA and a session name that is
# the engineer's user name), not by a service acting for someone else, and it can only read.
data "aws_iam_policy_document" "reader_trust" {
  count = local.role_mode && local.reader ? 1 : 0

  statement {
    sid     = "AssumeFromNewAccountToRead"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "AWS"
      identifiers = var.reader_trusted_role_arns
    }
  }
}

resource "aws_iam_role" "reader" {
  count = local.role_mode && local.reader ? 1 : 0

  name                 = var.reader_role_name
  description          = "fanout: lets the new account's on-call role read the migrated Kinesis streams in this account (fanoutctl verify)."
  assume_role_policy   = data.aws_iam_policy_document.reader_trust[0].json
  max_session_duration = 3600

  tags = var.tags
}

data "aws_iam_policy_document" "read" {
  count = local.role_mode && local.reader ? 1 : 0

  statement {
    sid       = "ReadTargetStreams"
    effect    = "Allow"
    actions   = local.reader_actions
    resources = var.stream_arns
  }

  dynamic "statement" {
    for_each = length(var.kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "DecryptTargetRecords"
      effect    = "Allow"
      actions   = ["kms:Decrypt"]
      resources = var.kms_key_arns
    }
  }
}

resource "aws_iam_role_policy" "read" {
  count = local.role_mode && local.reader ? 1 : 0

  name   = "read-target-streams"
  role   = aws_iam_role.reader[0].id
  policy = data.aws_iam_policy_document.read[0].json
}

# ---------------------------------------------------------------------------------------------
# access_mode = "resource_policy": each stream admits the new account's roles directly.
# ---------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "stream" {
  for_each = local.resource_policy_mode ? toset(var.stream_arns) : toset([])

  statement {
    sid     = "ReplicateFromNewAccount"
    effect  = "Allow"
    actions = local.granted_actions

    principals {
      type        = "AWS"
      identifiers = var.trusted_role_arns
    }

    resources = [each.value]
  }

  # `fanoutctl verify` reads the stream with the on-call role's own credentials.
  dynamic "statement" {
    for_each = local.reader ? [1] : []
    content {
      sid     = "ReadFromNewAccount"
      effect  = "Allow"
      actions = local.reader_actions

      principals {
        type        = "AWS"
        identifiers = var.reader_trusted_role_arns
      }

      resources = [each.value]
    }
  }
}

# A stream has exactly one resource policy: this replaces any policy already on it.
resource "aws_kinesis_resource_policy" "stream" {
  for_each = local.resource_policy_mode ? toset(var.stream_arns) : toset([])

  resource_arn = each.value
  policy       = data.aws_iam_policy_document.stream[each.key].json
}

# ---------------------------------------------------------------------------------------------
# Both modes, with consumer_function_arns: the role through which the new account's controller
# and on-call role switch the old account's Lambda consumers of the old streams.
# ---------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "consumers_trust" {
  count = local.consumers ? 1 : 0

  statement {
    sid     = "AssumeFromNewAccountToSwitchConsumers"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "AWS"
      identifiers = var.consumers_trusted_role_arns
    }

    # Role mode: the same external id as the writer role (FANOUT_WRITER_EXTERNAL_ID).
    dynamic "condition" {
      for_each = local.consumers_external_id ? [1] : []
      content {
        test     = "StringEquals"
        variable = "sts:ExternalId"
        values   = [var.external_id]
      }
    }
  }

  lifecycle {
    precondition {
      condition     = length(var.consumers_trusted_role_arns) > 0
      error_message = "consumer_function_arns is set but consumers_trusted_role_arns is empty: nobody could assume the consumers role. Add the controller module's role_arn and oncall_role_arn."
    }
  }
}

resource "aws_iam_role" "consumers" {
  count = local.consumers ? 1 : 0

  name                 = var.consumers_role_name
  description          = "fanout: lets the new account's controller and on-call role switch off the old account's Lambda consumers of the migrated streams at the commit."
  assume_role_policy   = data.aws_iam_policy_document.consumers_trust[0].json
  max_session_duration = 3600

  tags = var.tags
}

data "aws_iam_policy_document" "consumers" {
  count = local.consumers ? 1 : 0

  # The flips switch the mappings on (until the commit) and off (at it), only those of the
  # functions in consumer_function_arns.
  statement {
    sid       = "SwitchConsumerMappings"
    effect    = "Allow"
    actions   = ["lambda:UpdateEventSourceMapping"]
    resources = [local.consumer_mappings]

    condition {
      test     = "ArnLike"
      variable = "lambda:FunctionArn"
      values   = var.consumer_function_arns
    }
  }

  # The consumers guard and `status` read them.
  statement {
    sid       = "ReadConsumerMappings"
    effect    = "Allow"
    actions   = ["lambda:GetEventSourceMapping"]
    resources = [local.consumer_mappings]
  }

  # `consumers add` finds a consumer's mapping from its function and stream.
  # ListEventSourceMappings has no resource to scope it to.
  statement {
    sid       = "FindConsumerMappings"
    effect    = "Allow"
    actions   = ["lambda:ListEventSourceMappings"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "consumers" {
  count = local.consumers ? 1 : 0

  name   = "switch-old-consumers"
  role   = aws_iam_role.consumers[0].id
  policy = data.aws_iam_policy_document.consumers[0].json
}
