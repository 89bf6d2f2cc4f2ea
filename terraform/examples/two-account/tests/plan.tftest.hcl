# Plan-only tests of the example on an empty state, with both AWS providers mocked: no
# credentials, no network, nothing created. They catch what the static checks cannot: a count or
# for_each that depends on a value known only after apply, a precondition or validation that
# fails, a module input of the wrong type, an expression that does not evaluate.
#
# Needs Terraform >= 1.7 (mock_provider). The Lambda zips are only hashed: pass any .zip file.
# Run by scripts/check-terraform.sh (offline, from a provider mirror); by hand, from this
# directory after `terraform init -backend=false`:
#   terraform test -var replicator_package_path=/tmp/x.zip -var controller_package_path=/tmp/x.zip

mock_provider "aws" {
  alias = "new"
  mock_data "aws_partition" { defaults = { partition = "aws", dns_suffix = "amazonaws.com" } }
  mock_data "aws_region" { defaults = { name = "us-east-1", region = "us-east-1" } }
  mock_data "aws_caller_identity" { defaults = { account_id = "123456789012" } }
  mock_data "aws_iam_policy_document" { defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}", minified_json = "{}" } }
}

mock_provider "aws" {
  alias = "old"
  mock_data "aws_partition" { defaults = { partition = "aws", dns_suffix = "amazonaws.com" } }
  mock_data "aws_region" { defaults = { name = "us-east-1", region = "us-east-1" } }
  mock_data "aws_caller_identity" { defaults = { account_id = "222222222222" } }
  mock_data "aws_iam_policy_document" { defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}", minified_json = "{}" } }
}

# terraform.tfvars.example's values (and the external id it keeps out of the file).
variables {
  new_account_id = "123456789012"
  new_region     = "us-east-1"
  old_account_id = "222222222222"
  old_region     = "us-east-1"
  migration_name = "orders-move"
  routes = [
    { source_arn = "arn:aws:kinesis:us-east-1:123456789012:stream/orders", target_arn = "arn:aws:kinesis:us-east-1:222222222222:stream/orders" },
    { source_arn = "arn:aws:kinesis:us-east-1:123456789012:stream/payments", target_arn = "arn:aws:kinesis:us-east-1:222222222222:stream/payments", name = "payments", order = "strict" },
  ]
  bucket_name           = "fanout-state-123456789012"
  writer_external_id    = "0123456789abcdef0123456789abcdef"
  oncall_principal_arns = ["arn:aws:iam::123456789012:user/alice", "arn:aws:iam::123456789012:user/bob"]
  oncall_require_mfa    = true
  tags                  = { project = "fanout", migration = "orders-move" }
}

run "plan_fresh_state" {
  command = plan

  assert {
    condition     = output.route_names == ["orders--222222222222--orders", "payments"]
    error_message = "route names: default <source>--<old account>--<target>, or the route's name"
  }

  assert {
    condition     = output.writer_role_arn == "arn:aws:iam::222222222222:role/fanout-writer"
    error_message = "role mode: the writer role's ARN is known before it exists"
  }

  # The bucket name is unknown on an empty state; the alarm must be planned all the same.
  assert {
    condition     = contains(keys(output.alarm_arns), "fanout-discarded-batches")
    error_message = "no discarded-batches alarm planned"
  }
}

run "plan_resource_policy_no_oncall" {
  command = plan

  variables {
    access_mode           = "resource_policy"
    writer_external_id    = null
    oncall_principal_arns = []
    oncall_require_mfa    = false
  }

  assert {
    condition     = output.writer_role_arn == null && output.oncall_role_arn == null && output.reader_role_arn == null && output.consumers_role_arn == null
    error_message = "resource-policy mode without on-call principals and consumers: no writer, on-call, read or consumers role"
  }
}

run "plan_everything" {
  command = plan

  variables {
    reverse_replication = true
    enhanced_fan_out    = true
    routing_reader_arns = ["arn:aws:iam::222222222222:role/orders-producer"]
    source_kms_key_arns = ["arn:aws:kms:us-east-1:123456789012:key/11111111-1111-1111-1111-111111111111"]
    target_kms_key_arns = ["arn:aws:kms:us-east-1:222222222222:key/22222222-2222-2222-2222-222222222222"]
    state_kms_key_arn   = "arn:aws:kms:us-east-1:123456789012:key/33333333-3333-3333-3333-333333333333"
    alarm_actions       = ["arn:aws:sns:us-east-1:123456789012:fanout-oncall"]
    consumers = [
      { name = "billing", function_arn = "arn:aws:lambda:us-east-1:123456789012:function:billing-new", stream_arn = "arn:aws:kinesis:us-east-1:123456789012:stream/orders" },
      { name = "audit", function_arn = "arn:aws:lambda:us-east-1:222222222222:function:audit", stream_arn = "arn:aws:kinesis:us-east-1:222222222222:stream/orders", moves_to_function = "arn:aws:lambda:us-east-1:123456789012:function:audit", lag_allowance = "5m" },
    ]
    # The on-call role's AssumeKclRoles statement (module controller's kcl_role_arns) is planned.
    # Its JSON cannot be asserted here: the mocked provider gives every aws_iam_policy_document
    # an empty Statement list; scripts/terraform_check.py checks the statement and the wiring.
    kcl_role_arns = ["arn:aws:iam::333333333333:role/billing-app-leases"]
  }

  assert {
    condition     = contains(keys(output.alarm_arns), "fanout-discarded-batches")
    error_message = "no discarded-batches alarm planned"
  }
}

run "plan_resource_policy_with_consumers" {
  command = plan

  variables {
    access_mode        = "resource_policy"
    writer_external_id = null
    consumers = [
      { name = "audit", function_arn = "arn:aws:lambda:us-east-1:222222222222:function:audit", stream_arn = "arn:aws:kinesis:us-east-1:222222222222:stream/orders" },
    ]
  }

  assert {
    condition     = output.writer_role_arn == null
    error_message = "resource-policy mode: no writer role"
  }
}
