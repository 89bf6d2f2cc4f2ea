# --- The two accounts ------------------------------------------------------------------------

variable "new_account_id" {
  type        = string
  description = "The new account (source streams; everything fanout runs). The new provider refuses to touch any other account."

  validation {
    condition     = can(regex("^[0-9]{12}$", var.new_account_id))
    error_message = "new_account_id must be a 12-digit AWS account id."
  }
}

variable "new_region" {
  type        = string
  description = "Region of the new account's source streams, where the functions run."
}

variable "new_profile" {
  type        = string
  description = "AWS CLI profile for the new account; null = the default credential chain (environment variables, SSO, instance role)."
  default     = null
}

variable "new_role_arn" {
  type        = string
  description = "Role to assume in the new account for applying (e.g. a deployment role); null = use the profile's credentials directly."
  default     = null
}

variable "old_account_id" {
  type        = string
  description = "The old account (target streams). The old provider refuses to touch any other account, and the writer role's ARN is built from it."

  validation {
    condition     = can(regex("^[0-9]{12}$", var.old_account_id))
    error_message = "old_account_id must be a 12-digit AWS account id."
  }
}

variable "old_region" {
  type        = string
  description = "Region of the old account's target streams. Must currently equal new_region (the functions use one region's clients)."
}

variable "old_profile" {
  type        = string
  description = "AWS CLI profile for the old account; null = the default credential chain."
  default     = null
}

variable "old_role_arn" {
  type        = string
  description = "Role to assume in the old account for applying (e.g. OrganizationAccountAccessRole from the new account's credentials); null = use the profile's credentials directly."
  default     = null
}

# --- What to replicate ------------------------------------------------------------------------

variable "migration_name" {
  type        = string
  description = "The migration's name: the controller's default migration, and the routing document producers read (s3://<bucket>/routing/<name>.json)."

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,128}$", var.migration_name))
    error_message = "migration_name must be 1-128 letters, digits, '.', '_' or '-'."
  }
}

variable "routes" {
  type = list(object({
    source_arn = string
    target_arn = string
    name       = optional(string)
    order      = optional(string, "strict")
  }))
  description = "Routes: a new-account source stream ARN and an old-account target stream ARN each, optionally a name (default <source name>--<old account id>--<target name>) and an order mode (\"strict\", the default; \"aggregated\"; or \"runs\"; see module replicator's README). Passed to the replicator and the controller alike (the controller ignores order)."
}

variable "source_kms_key_arns" {
  type        = list(string)
  description = "Customer-managed KMS keys of encrypted source streams (kms:Decrypt for the replicator and controller). Empty for unencrypted streams or the aws/kinesis key."
  default     = []
}

variable "target_kms_key_arns" {
  type        = list(string)
  description = "Customer-managed KMS keys of encrypted target streams (kms:GenerateDataKey for whoever writes). Each key's own policy must allow that principal too. Empty for unencrypted streams or the aws/kinesis key."
  default     = []
}

# --- State -------------------------------------------------------------------------------------

variable "table_name" {
  type        = string
  description = "Name of the state table (checkpoints, modes, heartbeats, migration state and history)."
  default     = "fanout-state"
}

variable "bucket_name" {
  type        = string
  description = "Name of the state bucket (dead letters, routing documents). Bucket names are global: include the account id, e.g. fanout-state-123456789012."
}

variable "dead_letter_prefix" {
  type        = string
  description = "Key prefix of dead letters in the bucket."
  default     = "dead-letters"
}

variable "dead_letter_expiration_days" {
  type        = number
  description = "Days a dead letter is kept. Redrive or acknowledge them well before that."
  default     = 90
}

variable "state_kms_key_arn" {
  type        = string
  description = "Customer-managed KMS key for the table and bucket; null = AWS managed keys."
  default     = null
}

variable "deletion_protection" {
  type        = bool
  description = "Protect the state table from deletion (checkpoints and the flip history live there). Set false only to tear a finished migration down."
  default     = true
}

variable "routing_reader_arns" {
  type        = list(string)
  description = "Principals in other accounts (e.g. the old account's producer roles) that may read the routing documents through the bucket policy."
  default     = []
}

# --- Access to the old streams ------------------------------------------------------------------

variable "access_mode" {
  type        = string
  description = "\"role\": the functions assume a writer role in the old account with an external id. \"resource_policy\": the target streams get resource policies that let the functions' own roles in."
  default     = "role"

  validation {
    condition     = contains(["role", "resource_policy"], var.access_mode)
    error_message = "access_mode must be \"role\" or \"resource_policy\"."
  }
}

variable "reverse_replication" {
  type        = bool
  description = "Whether the migration is started with `fanoutctl start --reverse`: lets the controller and on-call read the old streams (writer-access's reverse_replication)."
  default     = false
}

variable "consumers" {
  type = list(object({
    name              = string
    function_arn      = string
    stream_arn        = string
    mapping_uuid      = optional(string)
    from_start        = optional(bool, false)
    moves_to_function = optional(string)
    lag_allowance     = optional(string)
  }))
  description = "Lambda consumers whose event source mappings the flips switch (module controller's `consumers`): of a new stream (function in the new account; on from the cutover), or of an old stream (function in the old account; on until the commit, off at it, through the consumers role; with moves_to_function, a function of the new account, the commit gives it a mapping on the new stream)."
  default     = []
}

variable "consumers_role_name" {
  type        = string
  description = "Name of the consumers role in the old account (created when a consumer is on an old stream): the controller and on-call roles assume it to switch those consumers' mappings."
  default     = "fanout-old-consumers"
}

variable "writer_role_name" {
  type        = string
  description = "Name of the writer role in the old account (role mode)."
  default     = "fanout-writer"
}

variable "reader_role_name" {
  type        = string
  description = "Name of the read role in the old account (role mode, with an on-call role): the on-call role assumes it for `fanoutctl verify`."
  default     = "fanout-reader"
}

variable "writer_external_id" {
  type        = string
  description = "External id the writer role requires (role mode). Any hard-to-guess string, e.g. from `openssl rand -hex 16`; pass it as TF_VAR_writer_external_id rather than committing it."
  default     = null
  sensitive   = true
}

# --- The functions --------------------------------------------------------------------------------

variable "replicator_function_name" {
  type        = string
  description = "Name of the replicator function (and its role)."
  default     = "fanout-replicator"
}

variable "controller_function_name" {
  type        = string
  description = "Name of the controller function (and its role)."
  default     = "fanout-controller"
}

variable "replicator_package_path" {
  type        = string
  description = "The replicator's zip; null = <repo>/target/lambda/replicator/bootstrap.zip, where scripts/build-lambdas.sh puts it."
  default     = null
}

variable "controller_package_path" {
  type        = string
  description = "The controller's zip; null = <repo>/target/lambda/controller/bootstrap.zip, where scripts/build-lambdas.sh puts it."
  default     = null
}

variable "architecture" {
  type        = string
  description = "What the zips were built for: arm64 or x86_64."
  default     = "arm64"
}

variable "log_level" {
  type        = string
  description = "FANOUT_LOG for both functions."
  default     = "info"
}

variable "log_retention_days" {
  type        = number
  description = "Days CloudWatch keeps the functions' logs."
  default     = 30
}

variable "metrics_namespace" {
  type        = string
  description = "CloudWatch namespace of the replicator's metrics, used by the dashboard and alarms too."
  default     = "fanout"
}

# --- Replication --------------------------------------------------------------------------------

variable "replication_enabled" {
  type        = bool
  description = "Whether the event source mappings poll. Set false after `commit` (see README.md)."
  default     = true
}

variable "starting_position" {
  type        = string
  description = "Where the mappings start when created: TRIM_HORIZON (all records still in the source streams), LATEST, or AT_TIMESTAMP."
  default     = "TRIM_HORIZON"
}

variable "starting_position_timestamp" {
  type        = string
  description = "RFC 3339 start time, with starting_position = \"AT_TIMESTAMP\"."
  default     = null
}

variable "enhanced_fan_out" {
  type        = bool
  description = "Read the source streams through dedicated enhanced fan-out consumers."
  default     = false
}

# --- On call ------------------------------------------------------------------------------------

variable "oncall_principal_arns" {
  type        = list(string)
  description = "Principals of the new account allowed to assume the on-call role (invoke the controller, run every runbook command with fanoutctl): IAM users, or roles with oncall_session_name_is_username = false. Empty = no on-call role."
  default     = []
}

variable "oncall_role_name" {
  type        = string
  description = "Name of the on-call role."
  default     = "fanout-oncall"
}

variable "oncall_require_mfa" {
  type        = bool
  description = "Require MFA to assume the on-call role. Set false for IAM Identity Center roles (their chained sessions carry no MFA flag)."
  default     = true
}

variable "oncall_session_name_is_username" {
  type        = bool
  description = "Require the on-call role's session name to be the caller's IAM user name, so the identities the controller records (and the two-person rule compares) are people. Only IAM users have one: set false for role principals and see modules/controller/README.md."
  default     = true
}

variable "kcl_role_arns" {
  type        = list(string)
  description = "Roles of KCL applications that the on-call role may assume for `fanoutctl consumers move --kcl-role-arn <role>` (module controller's kcl_role_arns): each application's owners create one with dynamodb:Scan, PutItem and DeleteItem on its lease table, trusting the on-call role. Empty = none."
  default     = []
}

# --- Alarms -------------------------------------------------------------------------------------

variable "name_prefix" {
  type        = string
  description = "Prefix of the dashboard and alarm names."
  default     = "fanout"
}

variable "alarm_actions" {
  type        = list(string)
  description = "SNS topic ARNs the alarms notify."
  default     = []
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource, in both accounts."
  default     = {}
}
