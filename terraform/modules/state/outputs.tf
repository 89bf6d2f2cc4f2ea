output "table_name" {
  description = "Name of the state table (FANOUT_TABLE)."
  value       = aws_dynamodb_table.state.name
}

output "table_arn" {
  description = "ARN of the state table, for the Lambdas' and the on-call role's IAM policies."
  value       = aws_dynamodb_table.state.arn
}

output "bucket_name" {
  description = "Name of the dead-letter and routing bucket (FANOUT_DEAD_LETTER_BUCKET)."
  value       = aws_s3_bucket.state.id

  # Whoever uses the bucket starts after it is locked down and encrypted.
  depends_on = [
    aws_s3_bucket_public_access_block.state,
    aws_s3_bucket_policy.state,
    aws_s3_bucket_server_side_encryption_configuration.state,
  ]
}

output "bucket_arn" {
  description = "ARN of the bucket, for IAM policies (objects: `<bucket_arn>/<prefix>/*`)."
  value       = aws_s3_bucket.state.arn

  # Whoever uses the bucket starts after it is locked down and encrypted.
  depends_on = [
    aws_s3_bucket_public_access_block.state,
    aws_s3_bucket_policy.state,
    aws_s3_bucket_server_side_encryption_configuration.state,
  ]
}

output "dead_letter_prefix" {
  description = "Key prefix of dead letters, without slashes (FANOUT_DEAD_LETTER_PREFIX)."
  value       = var.dead_letter_prefix
}

output "routing_prefix" {
  description = "Key prefix of the routing documents, without slashes: `routing/<migration>.json`."
  value       = local.routing_prefix
}
