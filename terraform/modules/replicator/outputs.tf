output "function_name" {
  description = "Name of the replicator function (module observability's replicator_function_name)."
  value       = aws_lambda_function.this.function_name
}

output "function_arn" {
  description = "ARN of the replicator function."
  value       = aws_lambda_function.this.arn
}

output "role_arn" {
  description = "ARN of the function's execution role: the principal module writer-access must trust (trusted_role_arns) or name in the target streams' resource policy."
  value       = aws_iam_role.this.arn
}

output "role_name" {
  description = "Name of the function's execution role, for attaching further policies."
  value       = aws_iam_role.this.name
}

output "log_group_name" {
  description = "CloudWatch log group the function writes to (/aws/lambda/<function name>)."
  value       = aws_cloudwatch_log_group.this.name
}

output "event_source_mapping_uuids" {
  description = "UUID of each event source mapping, by source stream ARN. After a commit, disable them (event_source_mapping_enabled = false, or aws lambda update-event-source-mapping --uuid <uuid> --no-enabled)."
  value       = { for arn, m in aws_lambda_event_source_mapping.this : arn => m.uuid }
}

output "consumer_arns" {
  description = "ARN of each enhanced fan-out consumer, by source stream ARN; empty without enhanced_fan_out."
  value       = { for arn, c in aws_kinesis_stream_consumer.this : arn => c.arn }
}

output "route_names" {
  description = "Name of each route, in the order of var.routes: the Route dimension of the metrics (module observability's route_names), and the key of checkpoints and dead letters."
  value       = local.route_names
}
