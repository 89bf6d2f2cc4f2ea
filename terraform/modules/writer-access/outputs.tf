output "role_arn" {
  description = "ARN of the writer role, for the replicator's and controller's writer_role_arn (FANOUT_WRITER_ROLE_ARN). null with access_mode = `resource_policy`: leave writer_role_arn unset there."
  value       = one(aws_iam_role.writer[*].arn)

  # The role is only usable once its permissions are attached.
  depends_on = [aws_iam_role_policy.write, aws_iam_role_policy.encrypt]
}

output "reader_role_arn" {
  description = "ARN of the read role (`fanoutctl verify --target-role-arn <this>`), for the controller module's reader_role_arn. null with access_mode = `resource_policy` or without reader_trusted_role_arns."
  value       = one(aws_iam_role.reader[*].arn)

  # The role is only usable once its permissions are attached.
  depends_on = [aws_iam_role_policy.read]
}

output "consumers_role_arn" {
  description = "ARN of the consumers role, for the controller module's old_consumers_role_arn (FANOUT_OLD_CONSUMERS_ROLE_ARN; and for fanoutctl run by on-call engineers). null without consumer_function_arns."
  value       = one(aws_iam_role.consumers[*].arn)

  # The role is only usable once its permissions are attached.
  depends_on = [aws_iam_role_policy.consumers]
}

output "access_mode" {
  description = "The access mode in effect: `role` or `resource_policy`."
  value       = var.access_mode
}

output "stream_arns" {
  description = "The old account's streams this module grants access to."
  value       = var.stream_arns

  # In resource_policy mode the streams are writable once their policies are in place.
  depends_on = [aws_kinesis_resource_policy.stream]
}
