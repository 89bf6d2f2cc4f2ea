output "dashboard_name" {
  description = "Name of the CloudWatch dashboard (`<name_prefix>-replication`)."
  value       = aws_cloudwatch_dashboard.replication.dashboard_name
}

output "alarm_arns" {
  description = "Every alarm of this module: alarm name => alarm ARN."
  value = merge(
    { (aws_cloudwatch_metric_alarm.replicator_iterator_age.alarm_name) = aws_cloudwatch_metric_alarm.replicator_iterator_age.arn },
    { (aws_cloudwatch_metric_alarm.replicator_retention.alarm_name) = aws_cloudwatch_metric_alarm.replicator_retention.arn },
    { for a in aws_cloudwatch_metric_alarm.discarded_batches : a.alarm_name => a.arn },
    { (aws_cloudwatch_metric_alarm.replicator_errors.alarm_name) = aws_cloudwatch_metric_alarm.replicator_errors.arn },
    { (aws_cloudwatch_metric_alarm.replicator_throttles.alarm_name) = aws_cloudwatch_metric_alarm.replicator_throttles.arn },
    { for a in aws_cloudwatch_metric_alarm.controller_errors : a.alarm_name => a.arn },
    { for a in aws_cloudwatch_metric_alarm.route_lag : a.alarm_name => a.arn },
    { for a in aws_cloudwatch_metric_alarm.route_dead_letters : a.alarm_name => a.arn },
    { for a in aws_cloudwatch_metric_alarm.route_shard_stopped : a.alarm_name => a.arn },
    { for a in aws_cloudwatch_metric_alarm.route_throughput_retries : a.alarm_name => a.arn },
  )
}
