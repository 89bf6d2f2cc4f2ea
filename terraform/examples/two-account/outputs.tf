output "replicator_function_name" {
  description = "The replicator function."
  value       = module.replicator.function_name
}

output "controller_function_name" {
  description = "The controller function: aws lambda invoke --function-name <this> --cli-binary-format raw-in-base64-out --payload '{\"command\":\"status\"}' out.json"
  value       = module.controller.function_name
}

output "event_source_mapping_uuids" {
  description = "The replicator's event source mappings, by source stream ARN."
  value       = module.replicator.event_source_mapping_uuids
}

output "route_names" {
  description = "Route names: the Route dimension of the metrics, and the key of checkpoints and dead letters."
  value       = module.replicator.route_names
}

output "writer_role_arn" {
  description = "The writer role in the old account (FANOUT_WRITER_ROLE_ARN), or null in resource-policy mode. Set it, with the external id, when running fanoutctl by hand."
  value       = local.writer_role_arn
}

output "oncall_role_arn" {
  description = "The on-call role, or null without oncall_principal_arns."
  value       = module.controller.oncall_role_arn
}

output "reader_role_arn" {
  description = "The read role in the old account (role mode, with an on-call role): fanoutctl verify --target-role-arn <this>."
  value       = module.writer_access.reader_role_arn
}

output "consumers_role_arn" {
  description = "The consumers role in the old account (with consumers on old streams), or null: FANOUT_OLD_CONSUMERS_ROLE_ARN when running fanoutctl by hand."
  value       = module.writer_access.consumers_role_arn
}

output "controller_function_url" {
  description = "The controller's IAM-authenticated function URL: SigV4-signed POSTs with the JSON command as body, e.g. awscurl --service lambda. Two-person approvals go this way (or through fanoutctl)."
  value       = module.controller.function_url
}

output "table_name" {
  description = "The state table (FANOUT_TABLE for fanoutctl)."
  value       = module.state.table_name
}

output "bucket_name" {
  description = "The state bucket (FANOUT_DEAD_LETTER_BUCKET for fanoutctl); routing documents are at routing/<migration>.json."
  value       = module.state.bucket_name
}

output "dashboard_name" {
  description = "The CloudWatch dashboard."
  value       = module.observability.dashboard_name
}

output "alarm_arns" {
  description = "The alarms, by name."
  value       = module.observability.alarm_arns
}
