# --- The function ---------------------------------------------------------------------------

variable "function_name" {
  type        = string
  description = "Name of the controller Lambda function. Also names its IAM role and its log group (/aws/lambda/<name>)."
  nullable    = false
  default     = "fanout-controller"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,64}$", var.function_name))
    error_message = "function_name must be 1-64 letters, digits, '-' or '_' (a Lambda function name that also fits an IAM role name)."
  }
}

variable "package_path" {
  type        = string
  description = "Path to the controller's deployment package, target/lambda/controller/bootstrap.zip as scripts/build-lambdas.sh writes it. Its hash is the function's source_code_hash, so a rebuilt zip is deployed on the next apply."
  nullable    = false

  validation {
    condition     = can(regex("\\.zip$", var.package_path))
    error_message = "package_path must point at the zip built for the controller (…/target/lambda/controller/bootstrap.zip)."
  }
}

variable "architecture" {
  type        = string
  description = "Instruction set the package was built for: arm64 (the default) or x86_64. It must match the zip, or the function fails at start-up with an exec format error."
  nullable    = false
  default     = "arm64"

  validation {
    condition     = contains(["arm64", "x86_64"], var.architecture)
    error_message = "architecture must be \"arm64\" or \"x86_64\", matching how the zip was built."
  }
}

variable "memory_size" {
  type        = number
  description = "Memory in MB. The controller mostly waits (settle, drain); 256 MB is plenty."
  nullable    = false
  default     = 256

  validation {
    condition     = var.memory_size >= 128 && var.memory_size <= 10240 && floor(var.memory_size) == var.memory_size
    error_message = "memory_size must be a whole number of MB between 128 and 10240."
  }
}

variable "timeout_seconds" {
  type        = number
  description = "Function timeout in seconds. A flip holds producers, waits --settle (7 s), then waits for replication to drain (--drain-timeout, 2 min by default) before it switches, so the function needs minutes, not seconds; 900 is Lambda's maximum. Keep it above settle + drain timeout + 60 s, or a flip is cut off mid-way and left for the next command to release."
  nullable    = false
  default     = 900

  validation {
    condition     = var.timeout_seconds >= 60 && var.timeout_seconds <= 900 && floor(var.timeout_seconds) == var.timeout_seconds
    error_message = "timeout_seconds must be a whole number from 60 to 900; a flip waits for the drain (2 minutes by default), so prefer 900."
  }
}

variable "log_level" {
  type        = string
  description = "FANOUT_LOG: the tracing filter, e.g. \"info\", \"warn\", or \"info,fanout=debug\". INFO logs nothing per record; each dead letter is one WARN line."
  nullable    = false
  default     = "info"

  validation {
    condition     = length(trimspace(var.log_level)) > 0
    error_message = "log_level must not be empty; use \"info\" if unsure."
  }
}

variable "log_retention_days" {
  type        = number
  description = "How long CloudWatch keeps the function's logs, in days (one of the values CloudWatch accepts)."
  nullable    = false
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653 (CloudWatch accepts no other value)."
  }
}

# --- The migration ----------------------------------------------------------------------------

variable "migration" {
  type        = string
  description = "FANOUT_MIGRATION: the migration a command acts on when its JSON names none. It keys the state item (migration#<name>) and the routing document (routing/<name>.json) producers read. null = every command must name its migration."
  default     = null

  validation {
    condition     = var.migration == null || can(regex("^[A-Za-z0-9._-]{1,128}$", var.migration))
    error_message = "migration must be 1-128 letters, digits, '.', '_' or '-' (it becomes part of an S3 key producers read), or null."
  }
}

variable "routes" {
  type = list(object({
    source_arn = string
    target_arn = string
    name       = optional(string)
  }))
  description = "The replicator's routes (pass the same list as to module replicator). The controller's start command makes one logical stream per route from them, and its guards read the source streams and describe the target streams."
  nullable    = false

  validation {
    condition     = length(var.routes) > 0
    error_message = "routes is empty: give at least one {source_arn, target_arn}, the same as the replicator's."
  }

  validation {
    condition = alltrue([for r in var.routes : (
      can(regex("^arn:aws[a-zA-Z-]*:kinesis:[a-z0-9-]+:[0-9]{12}:stream/[a-zA-Z0-9_.-]{1,128}$", r.source_arn)) &&
      can(regex("^arn:aws[a-zA-Z-]*:kinesis:[a-z0-9-]+:[0-9]{12}:stream/[a-zA-Z0-9_.-]{1,128}$", r.target_arn))
    )])
    error_message = "Every route's source_arn and target_arn must be a Kinesis stream ARN: arn:aws:kinesis:<region>:<12-digit account>:stream/<name>."
  }

  validation {
    condition     = alltrue([for r in var.routes : r.name == null || can(regex("^[A-Za-z0-9._-]{1,200}$", r.name))])
    error_message = "A route name may only use letters, digits, '-', '_' and '.'."
  }
}

variable "consumers" {
  type = list(object({
    name              = string
    function_arn      = string
    stream_arn        = string
    mapping_uuid      = optional(string)
    from_start        = optional(bool, false)
    moves_to_function = optional(string)
    lag_allowance     = optional(string)
  }))
  description = "Lambda consumers of the migration's streams, by their event source mappings: `start` registers them (FANOUT_CONSUMERS) and every flip switches their mappings. A consumer of a new stream (stream_arn one of the routes' source_arn; function and mapping in this account): off while producers are on the old streams (unless from_start), on from the cutover, off again at a rollback; the controller and on-call roles may update only these functions' mappings. A consumer of an old stream (stream_arn one of the routes' target_arn; function and mapping in the old account): on until the commit, off from it, switched through writer-access's consumers role (old_consumers_role_arn; list the function in its consumer_function_arns). With moves_to_function (a function ARN in this account), the commit also creates an enabled mapping of that function on the old stream's new counterpart, starting (AT_TIMESTAMP, from the position map) at what arrived in the old stream lag_allowance (default \"5m\"; e.g. \"30s\", \"10m\", \"1h\") before its old mapping was switched off, so no record is missed and the records of that allowance may be processed twice; the roles may create mappings only for these functions. Create each mapping of a new stream disabled in the consumer's own Terraform, and every mapping fanout switches with `lifecycle { ignore_changes = [enabled] }`. mapping_uuid: needed only when the function has several mappings on the stream."
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for c in var.consumers : contains(concat([for r in var.routes : r.source_arn], [for r in var.routes : r.target_arn]), c.stream_arn)])
    error_message = "Every consumer's stream_arn must be one of the routes' source_arn (a new stream) or target_arn (an old stream)."
  }

  validation {
    condition     = alltrue([for c in var.consumers : c.moves_to_function == null || contains([for r in var.routes : r.target_arn], c.stream_arn)])
    error_message = "moves_to_function is only for a consumer of an old stream (stream_arn one of the routes' target_arn): it moves to the new stream at the commit. A consumer of a new stream is already there."
  }

  validation {
    condition     = alltrue([for c in var.consumers : c.moves_to_function == null || can(regex("^arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:[0-9]{12}:function:[a-zA-Z0-9_-]{1,64}(:[a-zA-Z0-9_$-]+)?$", c.moves_to_function))])
    error_message = "Every consumer's moves_to_function must be a Lambda function ARN in the new account: arn:aws:lambda:<region>:<account>:function:<name>."
  }

  validation {
    condition     = alltrue([for c in var.consumers : c.lag_allowance == null || (c.moves_to_function != null && can(regex("^[0-9]+(ms|s|sec|secs|m|min|mins|h)?$", c.lag_allowance)))])
    error_message = "lag_allowance goes only with moves_to_function, and must be a duration like \"30s\", \"5m\", \"1h\" or \"500ms\" (a bare number is seconds)."
  }

  validation {
    condition     = alltrue([for c in var.consumers : !c.from_start || contains([for r in var.routes : r.source_arn], c.stream_arn)])
    error_message = "from_start is only for a consumer of a new stream: a consumer of an old stream is on until the commit anyway."
  }

  validation {
    condition     = alltrue([for c in var.consumers : can(regex("^arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:[0-9]{12}:function:[a-zA-Z0-9_-]{1,64}(:[a-zA-Z0-9_$-]+)?$", c.function_arn))])
    error_message = "Every consumer's function_arn must be a Lambda function ARN: arn:aws:lambda:<region>:<account>:function:<name>."
  }

  validation {
    condition     = length(distinct([for c in var.consumers : c.name])) == length(var.consumers)
    error_message = "Consumer names must be unique."
  }
}

variable "table_name" {
  type        = string
  description = "Name of the state table (module state's table_name): migration state, history, replication modes, heartbeats, checkpoints, verifications, dead-letter acknowledgements."
  nullable    = false
}

variable "table_arn" {
  type        = string
  description = "ARN of the state table (module state's table_arn); the role's DynamoDB grants name it."
  nullable    = false

  validation {
    condition     = can(regex("^arn:aws[a-zA-Z-]*:dynamodb:[a-z0-9-]+:[0-9]{12}:table/[a-zA-Z0-9_.-]{3,255}$", var.table_arn))
    error_message = "table_arn must be a DynamoDB table ARN: arn:aws:dynamodb:<region>:<account>:table/<name>."
  }
}

variable "bucket_name" {
  type        = string
  description = "Name of the state bucket (module state's bucket_name): the routing documents (routing/<migration>.json) and the dead letters the dead-letter guard counts."
  nullable    = false
}

variable "bucket_arn" {
  type        = string
  description = "ARN of the state bucket (module state's bucket_arn)."
  nullable    = false

  validation {
    condition     = can(regex("^arn:aws[a-zA-Z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_arn))
    error_message = "bucket_arn must be an S3 bucket ARN: arn:aws:s3:::<bucket name>."
  }
}

variable "dead_letter_prefix" {
  type        = string
  description = "Key prefix of dead letters in the bucket, without slashes at either end (module state's dead_letter_prefix). The roles may list the bucket only under it."
  nullable    = false
  default     = "dead-letters"

  validation {
    condition     = can(regex("^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$", var.dead_letter_prefix))
    error_message = "dead_letter_prefix must be a non-empty S3 key prefix without a leading or trailing '/', e.g. \"dead-letters\"."
  }
}

variable "state_kms_key_arn" {
  type        = string
  description = "Customer-managed KMS key of the state bucket, if module state was given one (its kms_key_arn); null when the bucket uses AWS managed keys. The roles then get kms:GenerateDataKey and kms:Decrypt on it to write and read the routing documents."
  default     = null

  validation {
    condition     = var.state_kms_key_arn == null || can(regex("^arn:aws[a-zA-Z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", var.state_kms_key_arn))
    error_message = "state_kms_key_arn must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<key id>; an alias ARN does not work in IAM policies) or null."
  }
}

variable "source_kms_key_arns" {
  type        = list(string)
  description = "Customer-managed KMS keys of encrypted source streams; the roles get kms:Decrypt on them because the lag guard reads the first unreplicated record of every shard."
  nullable    = false
  default     = []

  validation {
    condition     = alltrue([for k in var.source_kms_key_arns : can(regex("^arn:aws[a-zA-Z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", k))])
    error_message = "Every source_kms_key_arns entry must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<key id>)."
  }
}

# --- The old account --------------------------------------------------------------------------

variable "writer_role_arn" {
  type        = string
  description = "FANOUT_WRITER_ROLE_ARN: the role in the old account (module writer-access's role_arn). The controller assumes it to describe the old streams for the streams guard; writer-access must list this module's role_arn (and oncall_role_arn) in trusted_role_arns. null = resource-policy mode: the roles describe the target streams directly, and the streams' resource policies must allow kinesis:DescribeStreamSummary to them."
  default     = null

  validation {
    condition     = var.writer_role_arn == null || can(regex("^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$", var.writer_role_arn))
    error_message = "writer_role_arn must be an IAM role ARN (arn:aws:iam::<old account id>:role/<name>) or null."
  }
}

variable "writer_external_id" {
  type        = string
  description = "FANOUT_WRITER_EXTERNAL_ID: the external id the writer role's trust policy requires. Only with writer_role_arn. It is set as a plain environment variable: an external id guards against a confused deputy, it is not a password."
  default     = null
  sensitive   = true

  validation {
    # Terraform's regex (RE2) allows a repeat count of at most 1000: the length is checked apart.
    condition     = var.writer_external_id == null || (can(regex("^[A-Za-z0-9+=,.@:/_-]{2,}$", var.writer_external_id)) && try(length(var.writer_external_id) <= 1224, false))
    error_message = "writer_external_id must be 2-1224 characters from letters, digits and +=,.@:/_- (what STS accepts), or null."
  }
}

variable "reader_role_arn" {
  type        = string
  description = "Role mode: the read role in the old account (module writer-access's reader_role_arn, trusted by this module's oncall_role_arn through reader_trusted_role_arns). The on-call role gets sts:AssumeRole on it, for `fanoutctl verify --target-role-arn <this>`, which reads the old streams (the writer role may not). null = no such grant: in resource-policy mode the on-call role reads the old streams directly instead."
  default     = null

  validation {
    condition     = var.reader_role_arn == null || can(regex("^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$", var.reader_role_arn))
    error_message = "reader_role_arn must be an IAM role ARN (arn:aws:iam::<old account id>:role/<name>) or null."
  }
}

variable "old_consumers_role_arn" {
  type        = string
  description = "FANOUT_OLD_CONSUMERS_ROLE_ARN: the consumers role in the old account (module writer-access's consumers_role_arn, trusted by this module's role_arn and oncall_role_arn through its consumers_trusted_role_arns). The controller and on-call roles get sts:AssumeRole on it, and assume it (with writer_external_id when set) to find, read and switch the event source mappings of the `consumers` on old streams: on until the commit, off at it. Needed in both access modes when a consumer is on an old stream (event source mappings have no resource policy). null = no consumer on an old stream."
  default     = null

  validation {
    condition     = var.old_consumers_role_arn == null || can(regex("^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$", var.old_consumers_role_arn))
    error_message = "old_consumers_role_arn must be an IAM role ARN (arn:aws:iam::<old account id>:role/<name>) or null."
  }
}

variable "target_kms_key_arns" {
  type        = list(string)
  description = "Resource-policy mode only (writer_role_arn = null): customer-managed KMS keys of encrypted target streams; the on-call role gets kms:GenerateDataKey (redrive writes) and kms:Decrypt (verify reads) on them. In role mode the writer and read roles carry these grants (writer-access's kms_key_arns)."
  nullable    = false
  default     = []

  validation {
    condition     = alltrue([for k in var.target_kms_key_arns : can(regex("^arn:aws[a-zA-Z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", k))])
    error_message = "Every target_kms_key_arns entry must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<key id>)."
  }
}

# --- The replicator's settings -------------------------------------------------------------------
# The controller parses the replicator's configuration when it runs `start`, and refuses to if
# a value is invalid: pass the same values as to module replicator.

variable "metrics_namespace" {
  type        = string
  description = "FANOUT_METRICS_NAMESPACE: CloudWatch namespace of the embedded-metric-format lines. Module observability must use the same one."
  nullable    = false
  default     = "fanout"

  validation {
    condition     = length(var.metrics_namespace) > 0 && length(var.metrics_namespace) <= 255 && !startswith(var.metrics_namespace, "AWS/")
    error_message = "metrics_namespace must be 1-255 characters and must not start with \"AWS/\" (reserved by AWS)."
  }
}

variable "position_every_ms" {
  type        = number
  description = "FANOUT_POSITION_EVERY_MS: how often each (route, source shard) records a position pair (source and target positions) beside its checkpoint, for `fanoutctl positions translate` and `consumers move`: one small DynamoDB write per shard per interval. Shorter: translations closer to the consumer's position (fewer records seen twice); 0: every batch. (The replicator's setting: `start` parses the same configuration; pass the replicator module's value.)"
  nullable    = false
  default     = 10000

  validation {
    condition     = var.position_every_ms >= 0 && var.position_every_ms <= 600000 && floor(var.position_every_ms) == var.position_every_ms
    error_message = "position_every_ms must be a whole number from 0 to 600000."
  }
}

variable "mode_cache_ms" {
  type        = number
  description = "FANOUT_MODE_CACHE_MS: how long a route's replication mode (forward, hold, stopped) is cached. A flip's --settle must be longer than this."
  nullable    = false
  default     = 5000

  validation {
    condition     = var.mode_cache_ms >= 0 && var.mode_cache_ms <= 60000 && floor(var.mode_cache_ms) == var.mode_cache_ms
    error_message = "mode_cache_ms must be a whole number from 0 to 60000; above that a flip would wait too long for the replicator to notice."
  }
}

variable "aws_call_timeout_ms" {
  type        = number
  description = "FANOUT_AWS_TIMEOUT: the longest one AWS call may take, retries included (each attempt gets half). An endpoint that accepts connections and never answers fails the call after this, instead of holding the function until its own timeout."
  nullable    = false
  default     = 20000

  validation {
    condition     = var.aws_call_timeout_ms >= 1000 && var.aws_call_timeout_ms <= 120000 && floor(var.aws_call_timeout_ms) == var.aws_call_timeout_ms
    error_message = "aws_call_timeout_ms must be a whole number from 1000 to 120000."
  }
}

variable "max_request_entries" {
  type        = number
  description = "FANOUT_MAX_REQUEST_ENTRIES: entries per PutRecords request."
  nullable    = false
  default     = 500

  validation {
    condition     = var.max_request_entries >= 1 && var.max_request_entries <= 500 && floor(var.max_request_entries) == var.max_request_entries
    error_message = "max_request_entries must be a whole number from 1 to 500 (Kinesis accepts at most 500 entries per PutRecords)."
  }
}

variable "max_request_bytes" {
  type        = number
  description = "FANOUT_MAX_REQUEST_BYTES: bytes per PutRecords request, data and partition keys counted."
  nullable    = false
  default     = 5242880

  validation {
    condition     = var.max_request_bytes >= 1024 && var.max_request_bytes <= 5242880 && floor(var.max_request_bytes) == var.max_request_bytes
    error_message = "max_request_bytes must be a whole number from 1024 to 5242880 (Kinesis accepts at most 5 MiB per PutRecords)."
  }
}

variable "max_record_bytes" {
  type        = number
  description = "FANOUT_MAX_RECORD_BYTES: overrides the per-record limit the replicator reads from each target stream (DescribeStreamSummary). null = the target's own limit. Larger records are dead-lettered."
  default     = null

  validation {
    condition     = var.max_record_bytes == null ? true : (var.max_record_bytes >= 1 && var.max_record_bytes <= 10485760 && floor(var.max_record_bytes) == var.max_record_bytes)
    error_message = "max_record_bytes must be null or a whole number from 1 to 10485760."
  }
}

variable "max_concurrent_requests" {
  type        = number
  description = "FANOUT_MAX_CONCURRENT_REQUESTS: PutRecords requests in flight per shard batch (always for different partition keys)."
  nullable    = false
  default     = 4

  validation {
    condition     = var.max_concurrent_requests >= 1 && var.max_concurrent_requests <= 64 && floor(var.max_concurrent_requests) == var.max_concurrent_requests
    error_message = "max_concurrent_requests must be a whole number from 1 to 64."
  }
}

variable "backoff_base_ms" {
  type        = number
  description = "FANOUT_BACKOFF_BASE_MS: first backoff step after a throttled entry; the n-th retry waits a random time in [0, base * 2^n]."
  nullable    = false
  default     = 50

  validation {
    condition     = var.backoff_base_ms >= 0 && floor(var.backoff_base_ms) == var.backoff_base_ms
    error_message = "backoff_base_ms must be a whole non-negative number of milliseconds."
  }
}

variable "backoff_max_ms" {
  type        = number
  description = "FANOUT_BACKOFF_MAX_MS: cap of one backoff wait."
  nullable    = false
  default     = 5000

  validation {
    condition     = var.backoff_max_ms >= 0 && floor(var.backoff_max_ms) == var.backoff_max_ms
    error_message = "backoff_max_ms must be a whole non-negative number of milliseconds."
  }
}

variable "deadline_margin_ms" {
  type        = number
  description = "FANOUT_DEADLINE_MARGIN_MS: time kept before the invocation deadline to checkpoint and answer."
  nullable    = false
  default     = 3000

  validation {
    condition     = var.deadline_margin_ms >= 0 && floor(var.deadline_margin_ms) == var.deadline_margin_ms
    error_message = "deadline_margin_ms must be a whole non-negative number of milliseconds."
  }
}

variable "request_timeout_ms" {
  type        = number
  description = "FANOUT_REQUEST_TIMEOUT_MS: longest one PutRecords may take; past it the write is ambiguous (it may have landed), is sent again, and counts as a possible duplicate."
  nullable    = false
  default     = 10000

  validation {
    condition     = var.request_timeout_ms >= 1 && floor(var.request_timeout_ms) == var.request_timeout_ms
    error_message = "request_timeout_ms must be a whole number of milliseconds above 0."
  }
}

variable "shard_records_per_sec" {
  type        = number
  description = "FANOUT_SHARD_RECORDS_PER_SEC: a target shard's write limit in records per second (Kinesis: 1000). The replicator paces its writes to each target shard under it, less shard_headroom_pct, using the target's shard map (kinesis:ListShards, read again every 60 s; without that grant it logs a WARN and does not pace). Raise it only for a target that accepts more."
  nullable    = false
  default     = 1000

  validation {
    condition     = var.shard_records_per_sec >= 1 && var.shard_records_per_sec <= 1000000 && floor(var.shard_records_per_sec) == var.shard_records_per_sec
    error_message = "shard_records_per_sec must be a whole number from 1 to 1000000 (a Kinesis shard takes 1000 records/s; larger values are only for targets that enforce more)."
  }
}

variable "shard_bytes_per_sec" {
  type        = number
  description = "FANOUT_SHARD_BYTES_PER_SEC: a target shard's write limit in bytes per second, data and partition keys counted (Kinesis: 1048576, 1 MiB). The replicator paces its writes to each target shard under it, less shard_headroom_pct."
  nullable    = false
  default     = 1048576

  validation {
    condition     = var.shard_bytes_per_sec >= 1024 && var.shard_bytes_per_sec <= 1073741824 && floor(var.shard_bytes_per_sec) == var.shard_bytes_per_sec
    error_message = "shard_bytes_per_sec must be a whole number from 1024 to 1073741824 (a Kinesis shard takes 1048576 bytes/s; larger values are only for targets that enforce more)."
  }
}

variable "shard_headroom_pct" {
  type        = number
  description = "FANOUT_SHARD_HEADROOM_PCT: percent of each target shard's limits (shard_records_per_sec, shard_bytes_per_sec) the replicator leaves unused, for other writers of the target stream it does not see."
  nullable    = false
  default     = 3

  validation {
    condition     = var.shard_headroom_pct >= 0 && var.shard_headroom_pct <= 90 && floor(var.shard_headroom_pct) == var.shard_headroom_pct
    error_message = "shard_headroom_pct must be a whole number from 0 to 90: above 90 the replicator would use under a tenth of each target shard."
  }
}

variable "run_length" {
  type        = number
  description = "FANOUT_RUN_LENGTH: routes with order = \"runs\" only: most records of one partition key in one PutRecords request. Longer runs move a hot key faster; a failed entry inside a run makes the accepted entries after it be written again (RunRepairs)."
  nullable    = false
  default     = 100

  validation {
    condition     = var.run_length >= 1 && var.run_length <= 500 && floor(var.run_length) == var.run_length
    error_message = "run_length must be a whole number from 1 to 500 (records of one key in one PutRecords request, which holds at most 500 entries)."
  }
}

# --- The on-call role ------------------------------------------------------------------------------

variable "oncall_principal_arns" {
  type        = list(string)
  description = "IAM principals (users, account roots, or roles) that may assume the on-call role, to invoke the controller or run every runbook command with fanoutctl (status, plan, flips, pause and resume, history, dlq ack, verify, redrive, capacity). Roles need oncall_session_name_is_username = false. Empty = no on-call role is created."
  nullable    = false
  default     = []

  validation {
    condition     = alltrue([for p in var.oncall_principal_arns : can(regex("^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:(root|role/.+|user/.+)$", p))])
    error_message = "Every oncall_principal_arns entry must be an IAM role, user or account root ARN (arn:aws:iam::<account>:role/<name>, …:user/<name>, …:root)."
  }
}

variable "oncall_role_name" {
  type        = string
  description = "Name of the on-call IAM role."
  nullable    = false
  default     = "fanout-oncall"

  validation {
    condition     = can(regex("^[A-Za-z0-9+=,.@_-]{1,64}$", var.oncall_role_name))
    error_message = "oncall_role_name must be 1-64 characters from letters, digits and +=,.@_-."
  }
}

variable "oncall_require_mfa" {
  type        = bool
  description = "Require MFA (aws:MultiFactorAuthPresent) to assume the on-call role. Right for IAM users who sign in with MFA. Set false when the principals are roles, e.g. IAM Identity Center permission sets: a session obtained by assuming a role carries no MFA flag, so the condition would refuse everyone; enforce MFA at the identity provider instead."
  nullable    = false
  default     = true
}

variable "oncall_session_name_is_username" {
  type        = bool
  description = "Require the on-call role's session name (sts:RoleSessionName) to be the caller's own IAM user name (aws:username), so the identity the controller records, arn:aws:sts::<account>:assumed-role/<role>/<session name>, names a person and the two-person rule cannot be met by one person from two sessions. Only IAM users have a user name: with role principals (federation, IAM Identity Center) set it false, and give engineers an Identity Center permission set with the oncall_policy_json output instead of this role (AWS names each of its sessions after the signed-in user; see the README)."
  nullable    = false
  default     = true
}

variable "kcl_role_arns" {
  type        = list(string)
  description = "Roles the on-call role may assume for `fanoutctl consumers move --kcl-role-arn <role>`, which rewrites a KCL application's lease table: that table is the application's own, often in another account, so each application's owners create a role with dynamodb:Scan, PutItem and DeleteItem on it that trusts this module's oncall_role_arn. The on-call role (not the function's: the controller never moves a KCL application) gets sts:AssumeRole on exactly these. Empty = no such grant."
  nullable    = false
  default     = []

  validation {
    condition     = alltrue([for r in var.kcl_role_arns : can(regex("^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$", r))])
    error_message = "Every kcl_role_arns entry must be an IAM role ARN (arn:aws:iam::<account id>:role/<name>)."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource of the module that takes tags."
  nullable    = false
  default     = {}
}

variable "reverse_replication" {
  type        = bool
  description = "Set when migrations are started with `fanoutctl start --reverse`. In resource-policy mode (no writer_role_arn) this role then also gets kinesis:GetShardIterator, GetRecords and ListShards on the old streams, which the lag guard and `status` read (writer-access's reverse_replication grants the same in the streams' policies); in role mode the writer role carries them."
  default     = false
}

variable "abandoned_flip_sweep_minutes" {
  type        = number
  description = "Every how many minutes an EventBridge schedule runs `status` on `migration` through the function, which releases a flip whose process died (no sign of life for 15 s): producers it held are released within about this time even if nobody runs a command. 0 = no schedule (a flip is then released by the next command). Needs `migration`."
  default     = 1

  validation {
    condition     = var.abandoned_flip_sweep_minutes >= 0 && var.abandoned_flip_sweep_minutes <= 60 && floor(var.abandoned_flip_sweep_minutes) == var.abandoned_flip_sweep_minutes
    error_message = "abandoned_flip_sweep_minutes must be a whole number from 0 (off) to 60."
  }
}
