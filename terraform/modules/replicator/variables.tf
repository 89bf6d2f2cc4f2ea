# --- The function ---------------------------------------------------------------------------

variable "function_name" {
  type        = string
  description = "Name of the replicator Lambda function. Also names its IAM role, its log group (/aws/lambda/<name>) and, with enhanced fan-out, the stream consumers."
  nullable    = false
  default     = "fanout-replicator"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,64}$", var.function_name))
    error_message = "function_name must be 1-64 letters, digits, '-' or '_' (a Lambda function name that also fits an IAM role name)."
  }
}

variable "package_path" {
  type        = string
  description = "Path to the replicator's deployment package, target/lambda/replicator/bootstrap.zip as scripts/build-lambdas.sh writes it. Its hash is the function's source_code_hash, so a rebuilt zip is deployed on the next apply."
  nullable    = false

  validation {
    condition     = can(regex("\\.zip$", var.package_path))
    error_message = "package_path must point at the zip built for the replicator (…/target/lambda/replicator/bootstrap.zip)."
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
  description = "Memory in MB. The handler peaks under 40 MB even at Lambda's 6 MB event limit (BENCHMARKS.md); the size is chosen for CPU, which Lambda gives in proportion to memory."
  nullable    = false
  default     = 512

  validation {
    condition     = var.memory_size >= 128 && var.memory_size <= 10240 && floor(var.memory_size) == var.memory_size
    error_message = "memory_size must be a whole number of MB between 128 and 10240."
  }
}

variable "timeout_seconds" {
  type        = number
  description = "Function timeout in seconds. The write path keeps deadline_margin_ms of it to checkpoint and answer, so it must be well above that margin. A batch that runs out of time reports its first unwritten record and the mapping retries from there."
  nullable    = false
  default     = 60

  validation {
    condition     = var.timeout_seconds >= 10 && var.timeout_seconds <= 900 && floor(var.timeout_seconds) == var.timeout_seconds
    error_message = "timeout_seconds must be a whole number between 10 and 900 (Lambda's maximum)."
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

# --- What to replicate ----------------------------------------------------------------------

variable "routes" {
  type = list(object({
    source_arn = string
    target_arn = string
    name       = optional(string)
    order      = optional(string, "strict")
  }))
  description = "Routes, each a new-account source stream ARN and an old-account target stream ARN. name is optional and defaults to <source stream name>--<target account id>--<target stream name>; it keys the route's checkpoints, replication mode, dead letters and metrics, so never rename a route during a migration (the renamed route has no mode, and a route the controller never set replicates forward). order is optional, the order promise made to the target's consumers: \"strict\" (the default; per-key order, one unconfirmed record per key), \"aggregated\" (KPL aggregated records, only for consumers that deaggregate) or \"runs\" (up to run_length records of a key per request; the last copy of every record is in per-key order); see the README's order modes. One event source mapping is created per distinct source; a source with several targets gets one route (and one checkpoint) per target."
  nullable    = false

  validation {
    condition     = length(var.routes) > 0
    error_message = "routes is empty: give at least one {source_arn, target_arn}."
  }

  validation {
    condition = alltrue([for r in var.routes : (
      can(regex("^arn:aws[a-zA-Z-]*:kinesis:[a-z0-9-]+:[0-9]{12}:stream/[a-zA-Z0-9_.-]{1,128}$", r.source_arn)) &&
      can(regex("^arn:aws[a-zA-Z-]*:kinesis:[a-z0-9-]+:[0-9]{12}:stream/[a-zA-Z0-9_.-]{1,128}$", r.target_arn))
    )])
    error_message = "Every route's source_arn and target_arn must be a Kinesis stream ARN: arn:aws:kinesis:<region>:<12-digit account>:stream/<name>."
  }

  validation {
    condition     = alltrue([for r in var.routes : r.source_arn != r.target_arn])
    error_message = "A route replicates a stream into itself: source_arn and target_arn must differ."
  }

  validation {
    condition     = alltrue([for r in var.routes : r.name == null || can(regex("^[A-Za-z0-9._-]{1,200}$", r.name))])
    error_message = "A route name may only use letters, digits, '-', '_' and '.' (it becomes an S3 key part and a CloudWatch dimension)."
  }

  validation {
    condition     = alltrue([for r in var.routes : contains(["strict", "aggregated", "runs"], r.order)])
    error_message = "A route's order must be \"strict\", \"aggregated\" or \"runs\". strict (the default): per-key order of first arrivals, at most one unconfirmed record per key, so a key moves at one record per PutRecords round trip. aggregated: a key's consecutive records packed into KPL aggregated records, strict order at shard speed, only for target consumers that deaggregate (KCL, Firehose, Lambda consumers with the KPL deaggregation modules). runs: up to run_length records of a key per request, and accepted entries after a failed one are written again after it, so the last copy of every record is in per-key order but the first copy may not be (each repair counts in RunRepairs)."
  }

  validation {
    condition     = length(distinct([for r in var.routes : "${r.source_arn} ${r.target_arn}"])) == length(var.routes)
    error_message = "Two routes have the same source_arn and target_arn; list each pair once."
  }
}

variable "table_name" {
  type        = string
  description = "Name of the state table (module state's table_name): checkpoints, replication modes, heartbeats."
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
  description = "Name of the state bucket (module state's bucket_name): dead letters, and the event source mappings' on-failure destination."
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
  description = "Key prefix of dead letters in the bucket, without slashes at either end (module state's dead_letter_prefix). The role may write objects only under it."
  nullable    = false
  default     = "dead-letters"

  validation {
    condition     = can(regex("^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$", var.dead_letter_prefix))
    error_message = "dead_letter_prefix must be a non-empty S3 key prefix without a leading or trailing '/', e.g. \"dead-letters\"."
  }
}

variable "state_kms_key_arn" {
  type        = string
  description = "Customer-managed KMS key of the state bucket, if module state was given one (its kms_key_arn); null when the bucket uses AWS managed keys. The role then gets kms:GenerateDataKey on it to write dead letters and failure records."
  default     = null

  validation {
    condition     = var.state_kms_key_arn == null || can(regex("^arn:aws[a-zA-Z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", var.state_kms_key_arn))
    error_message = "state_kms_key_arn must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<key id>; an alias ARN does not work in IAM policies) or null."
  }
}

# --- Writing to the old account --------------------------------------------------------------

variable "writer_role_arn" {
  type        = string
  description = "FANOUT_WRITER_ROLE_ARN: the role in the old account to assume for writing (module writer-access's role_arn). null = resource-policy mode: the function's own role writes, the target streams must carry a resource policy that allows it (writer-access with access_mode = \"resource_policy\"), and this role gets kinesis:PutRecords, kinesis:DescribeStreamSummary and kinesis:ListShards on the target streams."
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

variable "target_kms_key_arns" {
  type        = list(string)
  description = "Resource-policy mode only (writer_role_arn = null): customer-managed KMS keys of encrypted target streams; the role gets kms:GenerateDataKey on them. In role mode the writer role carries this grant instead (writer-access's kms_key_arns)."
  nullable    = false
  default     = []

  validation {
    condition     = alltrue([for k in var.target_kms_key_arns : can(regex("^arn:aws[a-zA-Z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", k))])
    error_message = "Every target_kms_key_arns entry must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<key id>)."
  }
}

variable "source_kms_key_arns" {
  type        = list(string)
  description = "Customer-managed KMS keys of encrypted source streams; the role gets kms:Decrypt on them so the event source mapping can read the records. Leave empty for unencrypted streams or the AWS managed key (aws/kinesis)."
  nullable    = false
  default     = []

  validation {
    condition     = alltrue([for k in var.source_kms_key_arns : can(regex("^arn:aws[a-zA-Z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", k))])
    error_message = "Every source_kms_key_arns entry must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<key id>)."
  }
}

# --- Write path settings (FANOUT_*; see the README's configuration reference) ---------------

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
  description = "FANOUT_POSITION_EVERY_MS: how often each (route, source shard) records a position pair (source and target positions) beside its checkpoint, for `fanoutctl positions translate` and `consumers move`: one small DynamoDB write per shard per interval. Shorter: translations closer to the consumer's position (fewer records seen twice); 0: every batch."
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

# --- Event source mapping -------------------------------------------------------------------

variable "event_source_mapping_enabled" {
  type        = bool
  description = "Whether the event source mappings poll. Set false after the migration is committed (the controller stops the routes; disabling the mappings stops the invocations too). Records that arrive while disabled wait in the source streams."
  nullable    = false
  default     = true
}

variable "batch_size" {
  type        = number
  description = "Most records per invocation (one shard's records, in order). Larger batches mean fewer checkpoint writes; a batch needs as many write rounds as its hottest partition key has records."
  nullable    = false
  default     = 1000

  validation {
    condition     = var.batch_size >= 1 && var.batch_size <= 10000 && floor(var.batch_size) == var.batch_size
    error_message = "batch_size must be a whole number from 1 to 10000 (Lambda's limit for Kinesis)."
  }
}

variable "maximum_batching_window_in_seconds" {
  type        = number
  description = "How long the mapping may gather records before invoking. 0 keeps replication lag (and a flip's drain) shortest."
  nullable    = false
  default     = 0

  validation {
    condition     = var.maximum_batching_window_in_seconds >= 0 && var.maximum_batching_window_in_seconds <= 300 && floor(var.maximum_batching_window_in_seconds) == var.maximum_batching_window_in_seconds
    error_message = "maximum_batching_window_in_seconds must be a whole number from 0 to 300."
  }
}

variable "parallelization_factor" {
  type        = number
  description = "Must be 1. The replicator keeps ONE checkpoint per (route, shard) that only moves forward and skips records at or below it. With a factor above 1, Lambda runs several batches of one shard at once, grouped by partition-key hash: per-key order is kept but shard order is not, so one batch can move the checkpoint past records another batch has not written yet, and those are then skipped as already replicated, i.e. lost. Scale with more shards instead."
  nullable    = false
  default     = 1

  validation {
    condition     = var.parallelization_factor == 1
    error_message = "parallelization_factor must be 1. The replicator keeps one forward-only checkpoint per (route, shard) and skips records at or below it; with a factor above 1 Lambda processes several batches of a shard at once (per-key order kept, shard order not), so one batch can advance the checkpoint past records another has not written yet and those records would be skipped. Add shards to the source stream to get more throughput."
  }
}

variable "starting_position" {
  type        = string
  description = "Where a new mapping starts reading each shard: TRIM_HORIZON (everything still in the stream; the default, nothing missed), LATEST (only records that arrive after the mapping is created), or AT_TIMESTAMP (with starting_position_timestamp). Only read when a mapping is created; changing it replaces the mappings."
  nullable    = false
  default     = "TRIM_HORIZON"

  validation {
    condition     = contains(["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"], var.starting_position)
    error_message = "starting_position must be TRIM_HORIZON, LATEST or AT_TIMESTAMP."
  }
}

variable "starting_position_timestamp" {
  type        = string
  description = "RFC 3339 time (e.g. \"2026-12-01T10:00:00Z\") to start from; required with starting_position = \"AT_TIMESTAMP\", ignored otherwise."
  default     = null

  validation {
    condition     = var.starting_position_timestamp == null || can(timeadd(var.starting_position_timestamp, "0s"))
    error_message = "starting_position_timestamp must be an RFC 3339 time such as \"2026-12-01T10:00:00Z\", or null."
  }
}

variable "enhanced_fan_out" {
  type        = bool
  description = "Read through a dedicated enhanced fan-out consumer per source stream (its own 2 MB/s per shard, pushed with lower latency) instead of sharing the shards' classic read limit with every other consumer. Consumers cost extra per shard-hour and per GB."
  nullable    = false
  default     = false
}

variable "consumer_name" {
  type        = string
  description = "Name of the enhanced fan-out consumer registered on each source stream; null = function_name. Only with enhanced_fan_out."
  default     = null

  validation {
    condition     = var.consumer_name == null || can(regex("^[a-zA-Z0-9_.-]{1,128}$", var.consumer_name))
    error_message = "consumer_name must be 1-128 letters, digits, '_', '.' or '-', or null."
  }
}

variable "maximum_retry_attempts" {
  type        = number
  description = "Retries of a failed batch; -1 (the default) = until the record expires. Keep -1: the controller's hold mode (pause, and every flip) reports each batch's first record as failed so the mapping retries it later. With a finite number, a hold longer than the retries discards the held records into the on-failure destination and they are never replicated."
  nullable    = false
  default     = -1

  validation {
    condition     = var.maximum_retry_attempts == -1 || (var.maximum_retry_attempts >= 0 && var.maximum_retry_attempts <= 10000 && floor(var.maximum_retry_attempts) == var.maximum_retry_attempts)
    error_message = "maximum_retry_attempts must be -1 (retry until the record expires, required for hold mode to lose nothing) or a whole number from 0 to 10000."
  }
}

variable "maximum_record_age_in_seconds" {
  type        = number
  description = "Oldest record the mapping still sends to the function; -1 (the default) = up to the stream's retention. Keep -1 (or longer than any pause): records held longer than this are discarded into the on-failure destination and never replicated."
  nullable    = false
  default     = -1

  validation {
    condition     = var.maximum_record_age_in_seconds == -1 || (var.maximum_record_age_in_seconds >= 60 && var.maximum_record_age_in_seconds <= 604800 && floor(var.maximum_record_age_in_seconds) == var.maximum_record_age_in_seconds)
    error_message = "maximum_record_age_in_seconds must be -1 (no limit, required for hold mode to lose nothing) or a whole number from 60 to 604800."
  }
}

variable "bisect_batch_on_function_error" {
  type        = bool
  description = "Split a batch in two when the function fails (crash, timeout) and retry the halves, so one batch that cannot finish in time still makes progress. Splitting uses no retry attempts, and records already checkpointed are skipped when sent again. A held batch is a partial failure, not a function error; Lambda may split it at the reported record, which changes nothing for the replicator."
  nullable    = false
  default     = true
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource of the module that takes tags (the enhanced fan-out consumers take none)."
  nullable    = false
  default     = {}
}
