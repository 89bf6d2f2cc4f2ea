locals {
  # The controller publishes routing/<migration>.json (src/aws/routing.rs callers use "routing/").
  routing_prefix = "routing"
}

# ---------------------------------------------------------------------------------------------
# DynamoDB: checkpoints, leases, heartbeats, replication modes, migration state and history.
# ---------------------------------------------------------------------------------------------

resource "aws_dynamodb_table" "state" {
  name         = var.table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "sk"
    type = "S"
  }

  # TTL removes only the replicator's position pairs (`positions#…` items, `expires_at` in
  # epoch seconds, 3 days after they were recorded; readers skip expired pairs themselves, as
  # TTL deletes late). Nothing else carries `expires_at`: leases expire by their own
  # `expires_at_ms`, which the code compares itself, and the history items are the audit
  # trail of every flip, kept for as long as the table lives.
  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  # enabled = true with no key means the AWS managed key aws/dynamodb; with kms_key_arn, that
  # customer-managed key.
  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  deletion_protection_enabled = var.deletion_protection

  tags = var.tags
}

# ---------------------------------------------------------------------------------------------
# S3: dead letters (<dead_letter_prefix>/), routing documents (routing/), and the event source
# mapping's on-failure records (aws/lambda/, if the replicator points its mapping here).
# ---------------------------------------------------------------------------------------------

resource "aws_s3_bucket" "state" {
  #checkov:skip=CKV_AWS_18:Server access logs need a second bucket per deployment; who read or wrote dead letters and routing documents is better answered by CloudTrail S3 data events, which an organisation usually already collects centrally.
  #checkov:skip=CKV_AWS_144:Cross-region replication needs a second bucket, a replication role and a key in another region for migration-time data: dead letters live until redriven, the controller republishes the routing document on every flip, and versioning already protects against deletes and overwrites.
  #checkov:skip=CKV2_AWS_62:Nothing in fanout reacts to new objects: the dead-letter guard and `fanoutctl redrive` list the prefix, and the RecordsDeadLettered alarm notifies people. On-failure records under aws/lambda/ are counted by `fanoutctl status` and the same guard, and the observability module alarms on them through S3 request metrics (no notification needed).
  bucket = var.bucket_name

  # Dead letters are the only copy of records that could not be written: never let a destroy
  # empty the bucket.
  force_destroy = false

  tags = var.tags
}

resource "aws_s3_bucket_ownership_controls" "state" {
  bucket = aws_s3_bucket.state.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "state" {
  bucket = aws_s3_bucket.state.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "state" {
  bucket = aws_s3_bucket.state.id

  # Versioning keeps a redriven (deleted) dead letter and every earlier routing document for
  # noncurrent_version_expiration_days, so a wrong delete or publish can be undone.
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "state" {
  bucket = aws_s3_bucket.state.id

  rule {
    apply_server_side_encryption_by_default {
      # SSE-S3 rather than aws:kms with aws/s3 when no key is given: the aws/s3 key policy
      # cannot be changed, so no principal in another account could ever read an object (the
      # old account's producers read routing documents), and SSE-S3 has no KMS request cost
      # or quota to hit when many shards dead-letter at once.
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }

    # One data key per bucket instead of one KMS call per object.
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "state" {
  bucket = aws_s3_bucket.state.id

  # Lifecycle rules act on versions: they need versioning to be in place first.
  depends_on = [aws_s3_bucket_versioning.state]

  rule {
    id = "expire-dead-letters"
    # null switches the rule off instead of removing it (a dynamic block here would also hide
    # the other rule from checkov); a disabled rule does nothing, whatever its days say.
    status = var.dead_letter_expiration_days == null ? "Disabled" : "Enabled"

    filter {
      prefix = "${var.dead_letter_prefix}/"
    }

    # In a versioned bucket this adds a delete marker; the data itself goes
    # noncurrent_version_expiration_days later (rule below).
    expiration {
      days = coalesce(var.dead_letter_expiration_days, 36500)
    }
  }

  rule {
    id     = "bucket-hygiene"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    # A delete marker with no versions left behind it is clutter in every listing.
    expiration {
      expired_object_delete_marker = true
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

data "aws_iam_policy_document" "routing_readers" {
  count = length(var.routing_reader_arns) > 0 ? 1 : 0

  statement {
    sid     = "ProducersReadRoutingDocuments"
    effect  = "Allow"
    actions = ["s3:GetObject"]

    principals {
      type        = "AWS"
      identifiers = var.routing_reader_arns
    }

    resources = ["${aws_s3_bucket.state.arn}/${local.routing_prefix}/*"]
  }
}

data "aws_iam_policy_document" "bucket" {
  source_policy_documents = data.aws_iam_policy_document.routing_readers[*].json

  statement {
    sid    = "DenyInsecureTransport"
    effect = "Deny"
    # A Deny must cover every S3 action, including ones added later: listing them one by one
    # would leave gaps. This is the only wildcard in the module, and it only takes access away.
    actions = ["s3:*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    resources = [
      aws_s3_bucket.state.arn,
      "${aws_s3_bucket.state.arn}/*",
    ]

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "state" {
  bucket = aws_s3_bucket.state.id
  policy = data.aws_iam_policy_document.bucket.json

  # Changing both at once can fail with OperationAborted (a conflicting operation); in turn
  # it does not.
  depends_on = [aws_s3_bucket_public_access_block.state]
}
