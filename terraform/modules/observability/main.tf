data "aws_region" "current" {}

locals {
  ns = var.metrics_namespace

  # `name` works on provider 5.x and 6.x (6.x adds `region` and deprecates `name`).
  region = data.aws_region.current.name

  # Alarm names may be 255 characters; a default route name can be longer
  # (128 + 2 + 12 + 2 + 128). Long ones are cut and keep a hash so they stay unique.
  route_keys = {
    for r in var.route_names : r => (length(r) <= 160 ? r : "${substr(r, 0, 151)}-${substr(md5(r), 0, 8)}")
  }

  with_controller = var.controller_function_name != null

  # A count must be known at plan time; a bucket name from a resource of the same apply is not.
  discarded_batches = var.discarded_batches_alarm_enabled != null ? var.discarded_batches_alarm_enabled : var.state_bucket_name != null

  lambda_functions = compact([var.replicator_function_name, var.controller_function_name])

  # The same topics hear when an alarm clears, so whoever was paged sees it resolve.
  ok_actions = var.alarm_actions
}

# ---------------------------------------------------------------------------------------------
# Lag
# ---------------------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "replicator_iterator_age" {
  alarm_name        = "${var.name_prefix}-replicator-iterator-age"
  alarm_description = "The replicator's event source mapping is more than ${var.lag_threshold_ms} ms behind (IteratorAge: age of a batch's newest record when Lambda hands it to the function) in 3 of 5 minutes. Expected while a route is paused or stopped (hold/stopped mode): records wait in the source. Otherwise look at `fanoutctl status` (stuck shards) and at the shard-stopped and throttle alarms; see docs/runbook.md."

  namespace   = "AWS/Lambda"
  metric_name = "IteratorAge"
  dimensions  = { FunctionName = var.replicator_function_name }
  statistic   = "Maximum"
  period      = 60

  evaluation_periods  = 5
  datapoints_to_alarm = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.lag_threshold_ms

  # Lambda reports IteratorAge only for invocations, and the mapping invokes only when records
  # arrive: no data means an idle stream, which is no lag. (A mapping that cannot invoke at
  # all also sends nothing; `fanoutctl status` shows those shards as stuck.)
  treat_missing_data = "notBreaching"

  actions_enabled = true
  alarm_actions   = var.alarm_actions
  ok_actions      = local.ok_actions

  tags = var.tags
}

# Records the mapping has not handed over successfully are lost once they outlive the source
# stream's retention (or go to the on-failure destination before that, with bounded retries).
# IteratorAge keeps growing while a batch is retried (a paused route, a stuck shard), so it
# tells how close the oldest waiting record is to expiring.
resource "aws_cloudwatch_metric_alarm" "replicator_retention" {
  alarm_name        = "${var.name_prefix}-replicator-near-retention"
  alarm_description = "The oldest record the replicator's event source mapping still has to hand over is more than ${var.source_retention_hours - var.retention_margin_hours} h old (IteratorAge), ${var.retention_margin_hours} h before the source streams' ${var.source_retention_hours} h retention: records that old leave the stream, unreplicated. Now: resume a paused route (`fanoutctl resume`) or fix the stuck shard (`fanoutctl status`, the shard-stopped alarm); if that cannot happen in time, raise the source streams' retention (aws kinesis increase-stream-retention-period). See docs/runbook.md, \"Pausing\"."

  namespace   = "AWS/Lambda"
  metric_name = "IteratorAge"
  dimensions  = { FunctionName = var.replicator_function_name }
  statistic   = "Maximum"
  period      = 300

  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = (var.source_retention_hours - var.retention_margin_hours) * 3600 * 1000

  lifecycle {
    precondition {
      condition     = var.retention_margin_hours < var.source_retention_hours
      error_message = "retention_margin_hours must be less than source_retention_hours, or the near-retention alarm would fire at once."
    }
  }

  # No invocation, no data: a mapping that is disabled or cannot invoke sends nothing (the
  # records still age; `fanoutctl status` shows those shards as stuck).
  treat_missing_data = "notBreaching"

  actions_enabled = true
  alarm_actions   = var.alarm_actions
  ok_actions      = local.ok_actions

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "route_lag" {
  for_each = local.route_keys

  alarm_name        = "${var.name_prefix}-route-lag-${each.value}"
  alarm_description = "Route ${each.key}: the newest record of its batches was more than ${var.lag_threshold_ms} ms old when written (MillisBehindNewest, worst shard) in 3 of 5 minutes. The replicator is behind on this route: see the per-shard lag on the dashboard, `fanoutctl status`, and the throttle alarm of the same route."

  namespace   = local.ns
  metric_name = "MillisBehindNewest"
  dimensions  = { Route = each.key }
  statistic   = "Maximum"
  period      = 60

  evaluation_periods  = 5
  datapoints_to_alarm = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.lag_threshold_ms

  # The replicator emits this only with a batch it replicates: an idle route, or one on hold
  # (which the iterator-age alarm covers), sends nothing, and that is not lag.
  treat_missing_data = "notBreaching"

  actions_enabled = true
  alarm_actions   = var.alarm_actions
  ok_actions      = local.ok_actions

  tags = var.tags
}

# ---------------------------------------------------------------------------------------------
# Dead letters
# ---------------------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "route_dead_letters" {
  for_each = local.route_keys

  alarm_name        = "${var.name_prefix}-route-dead-letters-${each.value}"
  alarm_description = "Route ${each.key} dead-lettered records in the last 5 minutes (RecordsDeadLettered): they are in the state bucket with the reason, not in the target. A cutover or commit is refused until they are redriven or acknowledged: `fanoutctl status`, `fanoutctl redrive --dry-run`, `fanoutctl dlq ack` (docs/redrive.md). This alarm clears by itself; the dead letters stay."

  namespace   = local.ns
  metric_name = "RecordsDeadLettered"
  dimensions  = { Route = each.key }
  statistic   = "Sum"
  period      = 300

  # Every dead letter matters: one is enough.
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0

  # Emitted only with a replicated batch; no batch means no dead letters.
  treat_missing_data = "notBreaching"

  actions_enabled = true
  alarm_actions   = var.alarm_actions
  ok_actions      = local.ok_actions

  tags = var.tags
}

# A batch the event source mapping gave up on is written to its on-failure destination, the
# state bucket, under aws/lambda/. Those records were not replicated. S3 request metrics on
# that prefix count the writes (a bucket metrics configuration; CloudWatch bills it as custom
# metrics).
resource "aws_s3_bucket_metric" "discarded_batches" {
  count = local.discarded_batches ? 1 : 0

  bucket = var.state_bucket_name
  name   = "${var.name_prefix}-discarded-batches"

  filter {
    prefix = "aws/lambda/"
  }

  lifecycle {
    precondition {
      condition     = var.state_bucket_name != null
      error_message = "discarded_batches_alarm_enabled = true needs state_bucket_name (the state module's bucket_name output)."
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "discarded_batches" {
  count = local.discarded_batches ? 1 : 0

  alarm_name        = "${var.name_prefix}-discarded-batches"
  alarm_description = "Lambda's event source mapping gave up on a batch and wrote it to its on-failure destination (s3://${coalesce(var.state_bucket_name, "-")}/aws/lambda/) in the last 5 minutes: those records were NOT replicated. `fanoutctl redrive --dry-run` lists each batch and what can be recovered; `fanoutctl redrive --on-failure` replays the records a batch holds. Cutover and commit are refused until they are redriven or acknowledged. This alarm clears by itself; the objects stay."

  namespace   = "AWS/S3"
  metric_name = "PutRequests"
  dimensions = {
    BucketName = var.state_bucket_name
    FilterId   = aws_s3_bucket_metric.discarded_batches[0].name
  }
  statistic = "Sum"
  period    = 300

  # One is enough.
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0

  # S3 sends request metrics only for periods with requests.
  treat_missing_data = "notBreaching"

  actions_enabled = true
  alarm_actions   = var.alarm_actions
  ok_actions      = local.ok_actions

  tags = var.tags
}

# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "replicator_errors" {
  alarm_name        = "${var.name_prefix}-replicator-errors"
  alarm_description = "The replicator Lambda failed invocations in the last 5 minutes (crash, timeout, out of memory, or an event it could not read). The mapping retries the batch, so nothing is lost, but the shard does not move. Expected failures are reported per record and never count here: look at the function's logs."

  namespace   = "AWS/Lambda"
  metric_name = "Errors"
  dimensions  = { FunctionName = var.replicator_function_name }
  statistic   = "Sum"
  period      = 300

  # The handler answers batchItemFailures for everything it expects; an invocation error is
  # always unexpected.
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0

  # Lambda reports Errors only when the function runs; not running is not failing.
  treat_missing_data = "notBreaching"

  actions_enabled = true
  alarm_actions   = var.alarm_actions
  ok_actions      = local.ok_actions

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "controller_errors" {
  count = local.with_controller ? 1 : 0

  alarm_name        = "${var.name_prefix}-controller-errors"
  alarm_description = "The controller Lambda failed an invocation in the last 5 minutes: a command payload it could not read, or a crash or timeout during a command. Refused, failed or lost-race flips are answers, not errors. Check the function's logs and `fanoutctl history`; if a flip was interrupted, `fanoutctl status` shows it."

  namespace   = "AWS/Lambda"
  metric_name = "Errors"
  dimensions  = { FunctionName = var.controller_function_name }
  statistic   = "Sum"
  period      = 300

  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0

  # The controller runs only when someone sends a command: most periods have no data, and
  # that is normal.
  treat_missing_data = "notBreaching"

  actions_enabled = true
  alarm_actions   = var.alarm_actions
  ok_actions      = local.ok_actions

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "route_shard_stopped" {
  for_each = local.route_keys

  alarm_name        = "${var.name_prefix}-route-shard-stopped-${each.value}"
  alarm_description = "Route ${each.key}: shard batches stopped before their end in 3 of 5 minutes (ShardStopped). A systemic error (access denied, stream missing, expired credentials, unusable KMS key) stops a shard until someone fixes it; the ERROR line in the replicator's logs names the stream and the fix (the metric line's StopReason: systemic, checkpoint_unreadable, dead_letter_failed or deadline). deadline means retries, usually throttling, ran out of invocation time; it clears by itself."

  namespace   = local.ns
  metric_name = "ShardStopped"
  dimensions  = { Route = each.key }
  statistic   = "Sum"
  period      = 60

  # A stopped batch is retried at once and stops again, so a real stop shows up minute after
  # minute; a single deadline stop during a burst does not page anyone.
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0

  # Emitted only with a replicated batch; no batch, no stop.
  treat_missing_data = "notBreaching"

  actions_enabled = true
  alarm_actions   = var.alarm_actions
  ok_actions      = local.ok_actions

  tags = var.tags
}

# ---------------------------------------------------------------------------------------------
# Throttling
# ---------------------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "replicator_throttles" {
  alarm_name        = "${var.name_prefix}-replicator-throttles"
  alarm_description = "Lambda throttled the replicator in two 5-minute periods in a row: the mapping needs more concurrent executions (shards x parallelization factor) than the function's reserved concurrency or the account's unreserved concurrency allows. Records wait in the source; the lag alarms follow."

  namespace   = "AWS/Lambda"
  metric_name = "Throttles"
  dimensions  = { FunctionName = var.replicator_function_name }
  statistic   = "Sum"
  period      = 300

  # The mapping retries throttled invocations; only a lasting shortage needs a person.
  evaluation_periods  = 2
  datapoints_to_alarm = 2
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0

  # Lambda reports Throttles only when an invocation is attempted.
  treat_missing_data = "notBreaching"

  actions_enabled = true
  alarm_actions   = var.alarm_actions
  ok_actions      = local.ok_actions

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "route_throughput_retries" {
  for_each = local.route_keys

  alarm_name        = "${var.name_prefix}-route-throttle-retries-${each.value}"
  alarm_description = "Route ${each.key}: more than ${var.throttle_retries_threshold} PutRecords entries were re-sent in 5 minutes because the target stream in the old account was over its throughput (Retries, Reason ProvisionedThroughputExceededException). Order is kept, but lag grows: add shards to (or switch to on-demand on) the target stream, or check its other writers."

  namespace   = local.ns
  metric_name = "Retries"
  dimensions = {
    Route  = each.key
    Reason = "ProvisionedThroughputExceededException"
  }
  statistic = "Sum"
  period    = 300

  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.throttle_retries_threshold

  # A Retries line is written only when there were retries: no data means none.
  treat_missing_data = "notBreaching"

  actions_enabled = true
  alarm_actions   = var.alarm_actions
  ok_actions      = local.ok_actions

  tags = var.tags
}

# ---------------------------------------------------------------------------------------------
# Dashboard
# ---------------------------------------------------------------------------------------------

locals {
  all_alarm_arns = concat(
    [aws_cloudwatch_metric_alarm.replicator_iterator_age.arn],
    [aws_cloudwatch_metric_alarm.replicator_retention.arn],
    aws_cloudwatch_metric_alarm.discarded_batches[*].arn,
    [aws_cloudwatch_metric_alarm.replicator_errors.arn],
    aws_cloudwatch_metric_alarm.controller_errors[*].arn,
    [aws_cloudwatch_metric_alarm.replicator_throttles.arn],
    [for k in var.route_names : aws_cloudwatch_metric_alarm.route_lag[k].arn],
    [for k in var.route_names : aws_cloudwatch_metric_alarm.route_dead_letters[k].arn],
    [for k in var.route_names : aws_cloudwatch_metric_alarm.route_shard_stopped[k].arn],
    [for k in var.route_names : aws_cloudwatch_metric_alarm.route_throughput_retries[k].arn],
  )

  # One line per route for a metric of the [Route] dimension set.
  per_route = {
    for m in ["RecordsReplicated", "BytesReplicated", "RecordsDeadLettered", "ShardStopped", "PossibleDuplicates", "RunRepairs"] :
    m => [for r in var.route_names : [local.ns, m, "Route", r, { label = r }]]
  }

  per_function = {
    for m in ["Errors", "Throttles"] :
    m => [for f in local.lambda_functions : ["AWS/Lambda", m, "FunctionName", f, { label = f }]]
  }

  dashboard_widgets = [
    {
      type   = "text"
      x      = 0
      y      = 0
      width  = 24
      height = 2
      properties = {
        markdown = "## fanout replication (${var.replicator_function_name})\nThe lag alarms fire above ${var.lag_threshold_ms} ms; the controller refuses flips above its own `--max-lag` (default 60 s). Exact per-shard lag, stuck shards and unacknowledged dead letters: `fanoutctl status`. What to do: docs/runbook.md."
      }
    },
    {
      type   = "metric"
      x      = 0
      y      = 2
      width  = 12
      height = 7
      properties = {
        title  = "Lag per shard: MillisBehindNewest (max)"
        region = local.region
        view   = "timeSeries"
        period = 60
        # Shard ids are not known when this is planned (and change with resharding): SEARCH
        # finds every Route/Shard pair the replicator has reported.
        metrics = [
          [{
            id         = "lagpershard"
            expression = "SEARCH('{\"${local.ns}\",Route,Shard} MetricName=\"MillisBehindNewest\"', 'Maximum', 60)"
            label      = "$${PROP('Dim.Route')} $${PROP('Dim.Shard')}"
          }],
        ]
        yAxis       = { left = { min = 0, label = "ms", showUnits = false } }
        annotations = { horizontal = [{ label = "lag threshold", value = var.lag_threshold_ms }] }
      }
    },
    {
      type   = "metric"
      x      = 12
      y      = 2
      width  = 12
      height = 7
      properties = {
        title       = "Replicator iterator age (max)"
        region      = local.region
        view        = "timeSeries"
        period      = 60
        stat        = "Maximum"
        metrics     = [["AWS/Lambda", "IteratorAge", "FunctionName", var.replicator_function_name, { label = "IteratorAge" }]]
        yAxis       = { left = { min = 0, label = "ms", showUnits = false } }
        annotations = { horizontal = [{ label = "lag threshold", value = var.lag_threshold_ms }] }
      }
    },
    {
      type   = "metric"
      x      = 0
      y      = 9
      width  = 8
      height = 6
      properties = {
        title   = "Records replicated per route (sum)"
        region  = local.region
        view    = "timeSeries"
        period  = 60
        stat    = "Sum"
        metrics = local.per_route["RecordsReplicated"]
        yAxis   = { left = { min = 0 } }
      }
    },
    {
      type   = "metric"
      x      = 8
      y      = 9
      width  = 8
      height = 6
      properties = {
        title   = "Bytes replicated per route (sum)"
        region  = local.region
        view    = "timeSeries"
        period  = 60
        stat    = "Sum"
        metrics = local.per_route["BytesReplicated"]
        yAxis   = { left = { min = 0 } }
      }
    },
    {
      type   = "metric"
      x      = 16
      y      = 9
      width  = 8
      height = 6
      properties = {
        title   = "Dead letters per route (sum)"
        region  = local.region
        view    = "timeSeries"
        period  = 300
        stat    = "Sum"
        metrics = local.per_route["RecordsDeadLettered"]
        yAxis   = { left = { min = 0 } }
      }
    },
    {
      type   = "metric"
      x      = 0
      y      = 15
      width  = 6
      height = 6
      properties = {
        title  = "Retries by route and reason (sum)"
        region = local.region
        view   = "timeSeries"
        period = 300
        # Reasons are Kinesis error codes, whatever the target answers: find them all.
        metrics = [
          [{
            id         = "retries"
            expression = "SEARCH('{\"${local.ns}\",Route,Reason} MetricName=\"Retries\"', 'Sum', 300)"
            label      = "$${PROP('Dim.Route')} $${PROP('Dim.Reason')}"
          }],
        ]
        yAxis       = { left = { min = 0 } }
        annotations = { horizontal = [{ label = "PTE retry threshold", value = var.throttle_retries_threshold }] }
      }
    },
    {
      type   = "metric"
      x      = 6
      y      = 15
      width  = 6
      height = 6
      properties = {
        title   = "Shard batches stopped per route (sum)"
        region  = local.region
        view    = "timeSeries"
        period  = 60
        stat    = "Sum"
        metrics = local.per_route["ShardStopped"]
        yAxis   = { left = { min = 0 } }
      }
    },
    {
      type   = "metric"
      x      = 12
      y      = 15
      width  = 6
      height = 6
      properties = {
        title   = "Possible duplicates per route (sum)"
        region  = local.region
        view    = "timeSeries"
        period  = 300
        stat    = "Sum"
        metrics = local.per_route["PossibleDuplicates"]
        yAxis   = { left = { min = 0 } }
      }
    },
    {
      type   = "metric"
      x      = 18
      y      = 15
      width  = 6
      height = 6
      properties = {
        # Only routes with order = "runs" repair: a failed entry inside a run has the accepted
        # entries after it written again. No alarm: repairs follow failed entries, mostly
        # throttling, which the throttle-retries alarm already covers.
        title   = "Run repairs per route (sum)"
        region  = local.region
        view    = "timeSeries"
        period  = 300
        stat    = "Sum"
        metrics = local.per_route["RunRepairs"]
        yAxis   = { left = { min = 0 } }
      }
    },
    {
      type   = "metric"
      x      = 0
      y      = 21
      width  = 8
      height = 6
      properties = {
        title   = "Lambda errors (sum)"
        region  = local.region
        view    = "timeSeries"
        period  = 60
        stat    = "Sum"
        metrics = local.per_function["Errors"]
        yAxis   = { left = { min = 0 } }
      }
    },
    {
      type   = "metric"
      x      = 8
      y      = 21
      width  = 8
      height = 6
      properties = {
        title   = "Lambda throttles (sum)"
        region  = local.region
        view    = "timeSeries"
        period  = 60
        stat    = "Sum"
        metrics = local.per_function["Throttles"]
        yAxis   = { left = { min = 0 } }
      }
    },
    {
      type   = "metric"
      x      = 16
      y      = 21
      width  = 8
      height = 6
      properties = {
        title  = "Replicator duration (avg, p99, max)"
        region = local.region
        view   = "timeSeries"
        period = 60
        metrics = [
          ["AWS/Lambda", "Duration", "FunctionName", var.replicator_function_name, { stat = "Average", label = "average" }],
          ["AWS/Lambda", "Duration", "FunctionName", var.replicator_function_name, { stat = "p99", label = "p99" }],
          ["AWS/Lambda", "Duration", "FunctionName", var.replicator_function_name, { stat = "Maximum", label = "maximum" }],
        ]
        yAxis = { left = { min = 0, label = "ms", showUnits = false } }
      }
    },
    {
      type   = "alarm"
      x      = 0
      y      = 27
      width  = 24
      height = 4
      properties = {
        title = "Alarms"
        # An alarm status widget shows at most 100 alarms.
        alarms = slice(local.all_alarm_arns, 0, min(100, length(local.all_alarm_arns)))
      }
    },
  ]
}

resource "aws_cloudwatch_dashboard" "replication" {
  dashboard_name = "${var.name_prefix}-replication"
  dashboard_body = jsonencode({ widgets = local.dashboard_widgets })
}
