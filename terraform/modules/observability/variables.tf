variable "name_prefix" {
  type        = string
  description = "Prefix of every alarm name and of the dashboard name (`<name_prefix>-replication`)."
  default     = "fanout"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,64}$", var.name_prefix))
    error_message = "name_prefix must be 1 to 64 letters, digits, '-' or '_' (dashboard names allow nothing else)."
  }
}

variable "replicator_function_name" {
  type        = string
  description = "Name of the replicator Lambda function (the replicator module's function_name output)."

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,64}$", var.replicator_function_name))
    error_message = "replicator_function_name must be a Lambda function name (1 to 64 letters, digits, '-' or '_'), not an ARN."
  }
}

variable "controller_function_name" {
  type        = string
  description = "Name of the controller Lambda function, or null if it is not deployed (then it gets no alarm and no dashboard lines)."
  default     = null

  validation {
    condition     = var.controller_function_name == null || can(regex("^[A-Za-z0-9_-]{1,64}$", var.controller_function_name))
    error_message = "controller_function_name must be a Lambda function name (1 to 64 letters, digits, '-' or '_'), not an ARN, or null."
  }
}

variable "metrics_namespace" {
  type        = string
  description = "CloudWatch namespace the replicator's metrics are in (FANOUT_METRICS_NAMESPACE)."
  default     = "fanout"

  validation {
    condition     = length(var.metrics_namespace) >= 1 && length(var.metrics_namespace) <= 255 && !startswith(var.metrics_namespace, "AWS/") && !startswith(var.metrics_namespace, ":")
    error_message = "metrics_namespace must be 1 to 255 characters, must not start with ':' and must not start with 'AWS/' (reserved for AWS services)."
  }
}

variable "route_names" {
  type        = list(string)
  description = "Route names, exactly as the replicator reports them in the `Route` dimension (the replicator module's route_names output): a route's `name`, else `<source stream name>--<target account id>--<target stream name>`. One lag, dead-letter, shard-stopped and throughput-retry alarm each."

  validation {
    condition     = length(var.route_names) > 0 && length(distinct(var.route_names)) == length(var.route_names)
    error_message = "route_names must hold at least one route name, each once."
  }

  validation {
    condition     = alltrue([for r in var.route_names : length(r) >= 1 && length(r) <= 300])
    error_message = "Each route name must be 1 to 300 characters (default names are at most 272; the alarm descriptions quote the name and may be 1024 characters in all)."
  }
}

variable "lag_threshold_ms" {
  type        = number
  description = "Replication lag, in milliseconds, above which the lag alarms fire: the replicator's IteratorAge (age of a batch's newest record when Lambda hands it to the function) and each route's MillisBehindNewest (age of a batch's newest record when the replicator finished the batch). Keep it at or below the controller's --max-lag (default 60 s), so lag that would refuse a flip has already raised an alarm."
  default     = 60000

  validation {
    condition     = var.lag_threshold_ms > 0
    error_message = "lag_threshold_ms must be more than 0."
  }
}

variable "source_retention_hours" {
  type        = number
  description = "Retention period of the source streams (the new account's), in hours: 24 unless raised. Records older than this leave the stream; the near-retention alarm fires retention_margin_hours before. With several source streams, give the shortest."
  default     = 24

  validation {
    condition     = var.source_retention_hours >= 24 && var.source_retention_hours <= 8760
    error_message = "source_retention_hours must be between 24 and 8760 (Kinesis retention is 24 hours to 365 days)."
  }
}

variable "retention_margin_hours" {
  type        = number
  description = "How long before the source streams' retention runs out the near-retention alarm fires (IteratorAge above source_retention_hours - retention_margin_hours): time to resume, fix, or raise the retention. Must be less than source_retention_hours."
  default     = 6

  validation {
    condition     = var.retention_margin_hours > 0
    error_message = "retention_margin_hours must be more than 0."
  }
}

variable "state_bucket_name" {
  type        = string
  description = "Name of the state bucket, the replicator's on-failure destination (the state module's bucket_name output). Set: an S3 request-metrics filter on aws/lambda/ and an alarm when the event source mapping writes a discarded batch there (see discarded_batches_alarm_enabled). null: neither."
  default     = null
}

variable "discarded_batches_alarm_enabled" {
  type        = bool
  description = "Whether to add the request-metrics filter and the discarded-batches alarm on state_bucket_name. null: if state_bucket_name is set, which works only when the name is known at plan time (a literal or a variable). Set it (true with state_bucket_name) when state_bucket_name comes from a resource created in the same apply, such as the state module's bucket_name output: the number of alarms cannot depend on a value known only after apply."
  default     = null
}

variable "throttle_retries_threshold" {
  type        = number
  description = "Number of PutRecords entries a route may have re-sent because the target stream was over its throughput (Retries with Reason = ProvisionedThroughputExceededException) in 5 minutes before the alarm fires."
  default     = 100

  validation {
    condition     = var.throttle_retries_threshold >= 0
    error_message = "throttle_retries_threshold must be 0 or more."
  }
}

variable "alarm_actions" {
  type        = list(string)
  description = "SNS topic ARNs notified when an alarm fires and again when it is OK. Empty: the alarms only change state (visible in the console and on the dashboard)."
  default     = []

  validation {
    condition     = alltrue([for a in var.alarm_actions : can(regex("^arn:aws[a-zA-Z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}$", a))])
    error_message = "Each alarm_actions entry must be an SNS topic ARN (arn:aws:sns:<region>:<account>:<topic>)."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags for every taggable resource of this module (the alarms; CloudWatch dashboards take no tags)."
  default     = {}
}
