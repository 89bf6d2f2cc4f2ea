variable "access_mode" {
  type        = string
  description = "How the new account's replicator and controller reach the old streams: `role` creates a role they assume with the external ID (FANOUT_WRITER_ROLE_ARN = role_arn); `resource_policy` puts a resource policy on each stream instead (FANOUT_WRITER_ROLE_ARN unset). See the README for which to pick."
  default     = "role"

  validation {
    condition     = contains(["role", "resource_policy"], var.access_mode)
    error_message = "access_mode must be \"role\" or \"resource_policy\"."
  }
}

variable "role_name" {
  type        = string
  description = "Name of the writer role in the old account (access_mode = `role` only). Its ARN is predictable, `arn:aws:iam::<old account>:role/<role_name>`, so the new account can be applied first."
  default     = "fanout-writer"

  validation {
    condition     = can(regex("^[A-Za-z0-9+=,.@_-]{1,64}$", var.role_name))
    error_message = "role_name must be 1 to 64 characters of letters, digits and +=,.@_- (IAM's naming rule)."
  }
}

variable "stream_arns" {
  type        = list(string)
  description = "ARNs of the old account's streams that fanout writes to (the routes' targets). Nothing else is granted."

  validation {
    condition     = length(var.stream_arns) > 0 && alltrue([for a in var.stream_arns : can(regex("^arn:aws[a-zA-Z-]*:kinesis:[a-z0-9-]+:[0-9]{12}:stream/[A-Za-z0-9_.-]{1,128}$", a))])
    error_message = "stream_arns must hold at least one Kinesis stream ARN (arn:aws:kinesis:<region>:<account>:stream/<name>), with no wildcards."
  }
}

variable "trusted_role_arns" {
  type        = list(string)
  description = "Role ARNs in the new account that may write: the replicator's and the controller's execution roles (the controller reads the old streams' summaries for its guards), and the on-call role if engineers run fanoutctl migration commands or redrive under it. The roles must exist before this module is applied."

  validation {
    condition     = length(var.trusted_role_arns) > 0 && alltrue([for a in var.trusted_role_arns : can(regex("^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$", a))])
    error_message = "trusted_role_arns must hold at least one IAM role ARN (arn:aws:iam::<account>:role/<name>); account roots, users, assumed-role session ARNs and wildcards are not accepted."
  }
}

variable "reader_trusted_role_arns" {
  type        = list(string)
  description = "Role ARNs in the new account that may read the streams (kinesis:ListShards, GetShardIterator, GetRecords; kms:Decrypt on kms_key_arns): the on-call role, for `fanoutctl verify`, which compares each new stream with its old one. access_mode = `role`: a read role, reader_role_name, that they assume (`fanoutctl verify --target-role-arn <reader_role_arn>`); `resource_policy`: a second statement in each stream's policy. The writers never get these reads. Empty = nobody may read (verify then needs other credentials)."
  default     = []

  validation {
    condition     = alltrue([for a in var.reader_trusted_role_arns : can(regex("^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$", a))])
    error_message = "reader_trusted_role_arns must hold IAM role ARNs (arn:aws:iam::<account>:role/<name>); account roots, users, assumed-role session ARNs and wildcards are not accepted."
  }
}

variable "reader_role_name" {
  type        = string
  description = "Name of the read role in the old account (access_mode = `role`, with reader_trusted_role_arns). Its ARN is predictable, `arn:aws:iam::<old account>:role/<reader_role_name>`, so the new account's on-call role can be granted sts:AssumeRole on it first."
  default     = "fanout-reader"

  validation {
    condition     = can(regex("^[A-Za-z0-9+=,.@_-]{1,64}$", var.reader_role_name))
    error_message = "reader_role_name must be 1 to 64 characters of letters, digits and +=,.@_- (IAM's naming rule)."
  }
}

variable "consumer_function_arns" {
  type        = list(string)
  description = "Lambda functions of this (the old) account that consume the old streams through event source mappings, registered with the migration (module controller's `consumers` with an old stream_arn, or `fanoutctl consumers add`): the flips keep their mappings on until the commit and switch them off at it. Creates a role, consumers_role_name, in both access modes (event source mappings have no resource policy) that consumers_trusted_role_arns assume (with external_id in role mode): lambda:UpdateEventSourceMapping only on these functions' mappings (condition lambda:FunctionArn), lambda:GetEventSourceMapping and ListEventSourceMappings. Empty = no role: the migration's consumers are all on the new streams."
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for a in var.consumer_function_arns : can(regex("^arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:[0-9]{12}:function:[a-zA-Z0-9_-]{1,64}(:[a-zA-Z0-9_$-]+)?$", a))])
    error_message = "Every consumer_function_arns entry must be a Lambda function ARN: arn:aws:lambda:<region>:<account>:function:<name>."
  }
}

variable "consumers_trusted_role_arns" {
  type        = list(string)
  description = "Role ARNs in the new account that may assume the consumers role: the controller module's role_arn (the flips) and oncall_role_arn (fanoutctl run by on-call engineers). Required with consumer_function_arns. The roles must exist before this module is applied."
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for a in var.consumers_trusted_role_arns : can(regex("^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$", a))])
    error_message = "consumers_trusted_role_arns must hold IAM role ARNs (arn:aws:iam::<account>:role/<name>); account roots, users, assumed-role session ARNs and wildcards are not accepted."
  }
}

variable "consumers_role_name" {
  type        = string
  description = "Name of the consumers role in the old account (with consumer_function_arns). Its ARN is predictable, `arn:aws:iam::<old account>:role/<consumers_role_name>`, so the new account's controller module can be given it (old_consumers_role_arn) first."
  default     = "fanout-old-consumers"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9+=,.@_-]{1,64}$", var.consumers_role_name))
    error_message = "consumers_role_name must be 1 to 64 characters of letters, digits and +=,.@_- (IAM's naming rule)."
  }
}

variable "external_id" {
  type        = string
  description = "External ID the trusted roles must present when assuming the writer role, and the consumers role (FANOUT_WRITER_EXTERNAL_ID). Required with access_mode = `role`; unused with `resource_policy` (the consumers role is then assumed without one)."
  default     = null
  sensitive   = true

  validation {
    # Terraform's regex (RE2) allows a repeat count of at most 1000: the length is checked apart.
    condition     = var.external_id == null || (can(regex("^[A-Za-z0-9+=,.@:/_-]{2,}$", var.external_id)) && try(length(var.external_id) <= 1224, false))
    error_message = "external_id must be 2 to 1224 characters of letters, digits and +=,.@:/_- (STS's rule), or null."
  }
}

variable "kms_key_arns" {
  type        = list(string)
  description = "Customer-managed KMS keys of encrypted target streams: the writer role gets kms:GenerateDataKey on them (access_mode = `role`). The key policy must let IAM policies in this account grant its use (the default key policy does). Streams encrypted with the AWS managed key aws/kinesis need nothing here."
  default     = []

  validation {
    condition     = alltrue([for a in var.kms_key_arns : can(regex("^arn:aws[a-zA-Z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", a))])
    error_message = "Each kms_key_arns entry must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<key id>), not an alias."
  }
}

variable "reverse_replication" {
  type        = bool
  description = "Set when the migration is started with `fanoutctl start --reverse` (old → new replication while rolled back): also grants kinesis:GetShardIterator and GetRecords on the streams (kinesis:ListShards is always granted) and kms:Decrypt on kms_key_arns, which the controller's lag guard and `fanoutctl status` use to read the old streams. The reverse replicator itself runs as `fanoutctl replicate`, not deployed by these modules."
  default     = false
}

variable "tags" {
  type        = map(string)
  description = "Tags for every taggable resource of this module (the writer, read and consumers roles)."
  default     = {}
}
