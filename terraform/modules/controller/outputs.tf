output "function_name" {
  description = "Name of the controller function: aws lambda invoke --function-name <this> --payload '{\"command\":\"status\"}' (module observability's controller_function_name)."
  value       = aws_lambda_function.this.function_name
}

output "function_arn" {
  description = "ARN of the controller function."
  value       = aws_lambda_function.this.arn
}

output "role_arn" {
  description = "ARN of the function's execution role: module writer-access must trust it (trusted_role_arns) so the streams guard can describe the old streams, and, with consumers on old streams, list it in consumers_trusted_role_arns (the flips switch their mappings)."
  value       = aws_iam_role.this.arn
}

output "role_name" {
  description = "Name of the function's execution role."
  value       = aws_iam_role.this.name
}

output "log_group_name" {
  description = "CloudWatch log group the function writes to (/aws/lambda/<function name>)."
  value       = aws_cloudwatch_log_group.this.name
}

output "oncall_role_arn" {
  description = "ARN of the on-call role, or null when oncall_principal_arns is empty. Add it to writer-access's trusted_role_arns (fanoutctl run under it describes the old streams for the guards and writes them for redrive), reader_trusted_role_arns (verify reads them) and, with consumers on old streams, consumers_trusted_role_arns (the flips switch their mappings)."
  value       = local.oncall ? aws_iam_role.oncall[0].arn : null
}

output "function_url" {
  description = "The controller's function URL (IAM-authenticated: sign each request with SigV4, e.g. awscurl --service lambda -X POST -d '{\"command\":\"status\"}' <this>). The function takes a two-person approval only through it, where it knows the caller."
  value       = aws_lambda_function_url.this.function_url
}

output "oncall_policy_json" {
  description = "The on-call role's permissions as one IAM policy document (the migrate and operate documents): the inline policy of an IAM Identity Center permission set, when engineers sign in that way instead of assuming the on-call role (oncall_session_name_is_username = false)."
  value       = data.aws_iam_policy_document.oncall.json
}
