# fanout between two accounts: everything that runs lives in the new account; the old account
# only grants writes to its streams.

data "aws_partition" "old" {
  provider = aws.old
}

locals {
  role_mode = var.access_mode == "role"

  # The writer role's ARN is known before the role exists. Passing it as a string (not as
  # module.writer_access.role_arn) breaks the cycle: the writer role's trust policy names the
  # replicator's and controller's roles, and their policies name the writer role.
  writer_role_arn    = local.role_mode ? "arn:${data.aws_partition.old.partition}:iam::${var.old_account_id}:role/${var.writer_role_name}" : null
  writer_external_id = local.role_mode ? var.writer_external_id : null

  # The on-call role reads the old streams for `fanoutctl verify` through a read role (role
  # mode), known in advance like the writer role's.
  oncall          = length(var.oncall_principal_arns) > 0
  reader_role_arn = local.role_mode && local.oncall ? "arn:${data.aws_partition.old.partition}:iam::${var.old_account_id}:role/${var.reader_role_name}" : null

  # Lambda consumers of the old streams have their mappings in the old account; the controller
  # and on-call roles switch them through a consumers role there, known in advance like the
  # writer role's.
  old_consumer_function_arns = distinct([for c in var.consumers : c.function_arn if contains(local.target_arns, c.stream_arn)])
  old_consumers              = length(local.old_consumer_function_arns) > 0
  old_consumers_role_arn     = local.old_consumers ? "arn:${data.aws_partition.old.partition}:iam::${var.old_account_id}:role/${var.consumers_role_name}" : null

  repo_root               = "${path.root}/../../.."
  replicator_package_path = coalesce(var.replicator_package_path, "${local.repo_root}/target/lambda/replicator/bootstrap.zip")
  controller_package_path = coalesce(var.controller_package_path, "${local.repo_root}/target/lambda/controller/bootstrap.zip")

  target_arns = distinct([for r in var.routes : r.target_arn])
}

# Mistakes that would otherwise surface only at run time, as access errors in the logs.
resource "terraform_data" "input_checks" {
  lifecycle {
    precondition {
      condition     = alltrue([for r in var.routes : split(":", r.source_arn)[4] == var.new_account_id && split(":", r.source_arn)[3] == var.new_region])
      error_message = "Every route's source_arn must be a stream of the new account (new_account_id) in new_region: the event source mapping reads only streams in the function's own region."
    }

    precondition {
      condition     = alltrue([for r in var.routes : split(":", r.target_arn)[4] == var.old_account_id && split(":", r.target_arn)[3] == var.old_region])
      error_message = "Every route's target_arn must be a stream of the old account (old_account_id) in old_region."
    }

    precondition {
      condition     = alltrue([for c in var.consumers : split(":", c.function_arn)[4] == var.old_account_id if contains(local.target_arns, c.stream_arn)])
      error_message = "A consumer of an old stream (stream_arn one of the routes' target_arn) must have its function_arn in the old account (old_account_id): its event source mapping is there."
    }

    # The replicator and controller build one set of AWS clients, in the function's region.
    precondition {
      condition     = var.new_region == var.old_region
      error_message = "new_region and old_region must be the same: the replicator writes to the target streams with clients of its own region."
    }
  }
}

module "state" {
  source    = "../../modules/state"
  providers = { aws = aws.new }

  table_name                  = var.table_name
  bucket_name                 = var.bucket_name
  dead_letter_prefix          = var.dead_letter_prefix
  dead_letter_expiration_days = var.dead_letter_expiration_days
  kms_key_arn                 = var.state_kms_key_arn
  deletion_protection         = var.deletion_protection
  routing_reader_arns         = var.routing_reader_arns
  tags                        = var.tags
}

module "replicator" {
  source    = "../../modules/replicator"
  providers = { aws = aws.new }

  function_name      = var.replicator_function_name
  package_path       = local.replicator_package_path
  architecture       = var.architecture
  log_level          = var.log_level
  log_retention_days = var.log_retention_days

  routes             = var.routes
  table_name         = module.state.table_name
  table_arn          = module.state.table_arn
  bucket_name        = module.state.bucket_name
  bucket_arn         = module.state.bucket_arn
  dead_letter_prefix = module.state.dead_letter_prefix
  state_kms_key_arn  = var.state_kms_key_arn
  metrics_namespace  = var.metrics_namespace

  writer_role_arn     = local.writer_role_arn
  writer_external_id  = local.writer_external_id
  source_kms_key_arns = var.source_kms_key_arns
  # In role mode the writer role holds the key grant (writer-access's kms_key_arns).
  target_kms_key_arns = local.role_mode ? [] : var.target_kms_key_arns

  event_source_mapping_enabled = var.replication_enabled
  starting_position            = var.starting_position
  starting_position_timestamp  = var.starting_position_timestamp
  enhanced_fan_out             = var.enhanced_fan_out

  tags = var.tags
}

module "controller" {
  source    = "../../modules/controller"
  providers = { aws = aws.new }

  function_name      = var.controller_function_name
  package_path       = local.controller_package_path
  architecture       = var.architecture
  log_level          = var.log_level
  log_retention_days = var.log_retention_days

  migration          = var.migration_name
  routes             = var.routes
  table_name         = module.state.table_name
  table_arn          = module.state.table_arn
  bucket_name        = module.state.bucket_name
  bucket_arn         = module.state.bucket_arn
  dead_letter_prefix = module.state.dead_letter_prefix
  state_kms_key_arn  = var.state_kms_key_arn
  metrics_namespace  = var.metrics_namespace

  writer_role_arn     = local.writer_role_arn
  reverse_replication = var.reverse_replication
  consumers           = var.consumers
  writer_external_id  = local.writer_external_id
  reader_role_arn     = local.reader_role_arn
  # Consumers on old streams: their mappings are switched through writer-access's consumers role.
  old_consumers_role_arn = local.old_consumers_role_arn
  source_kms_key_arns    = var.source_kms_key_arns
  # In role mode the writer and read roles hold the key grants (writer-access's kms_key_arns).
  target_kms_key_arns = local.role_mode ? [] : var.target_kms_key_arns

  oncall_principal_arns           = var.oncall_principal_arns
  oncall_role_name                = var.oncall_role_name
  oncall_require_mfa              = var.oncall_require_mfa
  oncall_session_name_is_username = var.oncall_session_name_is_username
  # KCL applications' roles, for `fanoutctl consumers move --kcl-role-arn`.
  kcl_role_arns = var.kcl_role_arns

  tags = var.tags
}

module "writer_access" {
  source    = "../../modules/writer-access"
  providers = { aws = aws.old }

  access_mode = var.access_mode
  role_name   = var.writer_role_name
  stream_arns = local.target_arns
  # Module outputs, not strings: IAM refuses a trust policy that names a role that does not
  # exist yet, so this waits for the roles. The on-call role is here because fanoutctl run
  # under it describes the old streams for the guards (and writes them for a redrive).
  trusted_role_arns = [
    for arn in [module.replicator.role_arn, module.controller.role_arn, module.controller.oncall_role_arn] : arn if arn != null
  ]
  # Only the on-call role may read the old streams (`fanoutctl verify`). The list's length
  # must be known at plan time (it decides whether the read role exists), hence no filter.
  reader_trusted_role_arns = local.oncall ? [module.controller.oncall_role_arn] : []
  reader_role_name         = var.reader_role_name
  # The old account's Lambda consumers of the old streams, which the flips switch off at the
  # commit: the controller and the on-call role assume the consumers role for them. A list of
  # known length, like reader_trusted_role_arns.
  consumer_function_arns      = local.old_consumer_function_arns
  consumers_trusted_role_arns = local.old_consumers ? concat([module.controller.role_arn], local.oncall ? [module.controller.oncall_role_arn] : []) : []
  consumers_role_name         = var.consumers_role_name
  external_id                 = local.writer_external_id
  kms_key_arns                = var.target_kms_key_arns
  reverse_replication         = var.reverse_replication
  tags                        = var.tags
}

module "observability" {
  source    = "../../modules/observability"
  providers = { aws = aws.new }

  name_prefix              = var.name_prefix
  replicator_function_name = module.replicator.function_name
  controller_function_name = module.controller.function_name
  metrics_namespace        = var.metrics_namespace
  route_names              = module.replicator.route_names
  state_bucket_name        = module.state.bucket_name
  # The bucket name is known only after apply on a fresh state, and the alarm's count cannot
  # wait for it: say outright that there is one.
  discarded_batches_alarm_enabled = true
  alarm_actions                   = var.alarm_actions
  tags                            = var.tags
}
