variable "table_name" {
  type        = string
  description = "Name of the DynamoDB state table (checkpoints, leases, heartbeats, replication modes, migration state and history). The Lambdas receive it as FANOUT_TABLE."

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{3,255}$", var.table_name))
    error_message = "table_name must be 3 to 255 characters of letters, digits, '_', '-' and '.' (DynamoDB's naming rule)."
  }
}

variable "bucket_name" {
  type        = string
  description = "Name of the S3 bucket for dead letters and routing documents. Bucket names are global: include the account id or another unique part. The Lambdas receive it as FANOUT_DEAD_LETTER_BUCKET."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name)) && !can(regex("\\.\\.|^\\d+\\.\\d+\\.\\d+\\.\\d+$", var.bucket_name))
    error_message = "bucket_name must be 3 to 63 characters of lower-case letters, digits, '-' and '.', start and end with a letter or digit, have no '..' and not look like an IP address (S3's naming rule)."
  }
}

variable "dead_letter_prefix" {
  type        = string
  description = "Key prefix of dead letters, without slashes at either end (objects are `<prefix>/<route>/<shard>/<sequence>.json`). Must match FANOUT_DEAD_LETTER_PREFIX of the replicator and controller."
  default     = "dead-letters"

  validation {
    condition     = can(regex("^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$", var.dead_letter_prefix))
    error_message = "dead_letter_prefix must be non-empty, must not start or end with '/', and may use letters, digits, '/', and !_.*'()- (an empty prefix would put dead letters next to the routing documents, and the expiry rule would then delete routing documents too)."
  }

  validation {
    condition     = var.dead_letter_prefix != "routing" && !startswith(var.dead_letter_prefix, "routing/") && var.dead_letter_prefix != "aws" && !startswith(var.dead_letter_prefix, "aws/")
    error_message = "dead_letter_prefix must not be or start with 'routing' (the routing documents' prefix) or 'aws' (where Lambda writes the event source mapping's on-failure records): the dead-letter expiry rule would delete them."
  }
}

variable "dead_letter_expiration_days" {
  type        = number
  description = "Days after which an object under the dead-letter prefix expires (becomes a noncurrent version, deleted noncurrent_version_expiration_days later). A dead letter is the only copy of its record: keep this longer than the migration plus the time to review and redrive. null keeps dead letters until someone deletes them."
  default     = 90

  validation {
    condition     = var.dead_letter_expiration_days == null || try(var.dead_letter_expiration_days >= 1 && floor(var.dead_letter_expiration_days) == var.dead_letter_expiration_days, false)
    error_message = "dead_letter_expiration_days must be a whole number of days, at least 1, or null to keep dead letters until they are deleted."
  }
}

variable "noncurrent_version_expiration_days" {
  type        = number
  description = "Days a replaced or deleted object version (a redriven dead letter, an older routing document) is kept before S3 deletes it for good."
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a whole number of days, at least 1."
  }
}

variable "kms_key_arn" {
  type        = string
  description = "ARN of a customer-managed KMS key for the table and the bucket. null: the table uses the AWS managed key aws/dynamodb and the bucket uses SSE-S3 (AES256); see the README for why not aws/s3. With a key, the roles that use the bucket need it too: kms:GenerateDataKey to write (replicator, controller, on-call), kms:Decrypt to read (controller, on-call, routing readers), allowed by the key policy."
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-zA-Z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<key id>), not an alias or a bare key id, or null."
  }
}

variable "deletion_protection" {
  type        = bool
  description = "Turns on DynamoDB deletion protection for the table, which holds the checkpoints and the audit history of every flip. Set to false (and apply) before you destroy the table on purpose."
  default     = true
}

variable "routing_reader_arns" {
  type        = list(string)
  description = "IAM principals in other accounts (role ARNs or account roots, e.g. the old account's producers) allowed s3:GetObject on `routing/*` through the bucket policy. Same-account readers need only their own IAM policy. With kms_key_arn set, they also need kms:Decrypt in that key's policy."
  default     = []

  validation {
    condition     = alltrue([for a in var.routing_reader_arns : can(regex("^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:(root|role/.+|user/.+)$", a))])
    error_message = "Each routing_reader_arns entry must be an IAM role, user or account-root ARN (arn:aws:iam::<account>:role/<name>)."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags for every taggable resource of this module."
  default     = {}
}
