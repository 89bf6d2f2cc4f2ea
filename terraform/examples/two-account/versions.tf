terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80, < 7.0"
    }
  }
}

# The new account: source streams, state, replicator, controller, dashboard and alarms.
provider "aws" {
  alias               = "new"
  region              = var.new_region
  profile             = var.new_profile
  allowed_account_ids = [var.new_account_id]

  dynamic "assume_role" {
    for_each = var.new_role_arn == null ? [] : [var.new_role_arn]
    content {
      role_arn     = assume_role.value
      session_name = "fanout-terraform"
    }
  }
}

# The old account: the writer role (or the target streams' resource policies).
provider "aws" {
  alias               = "old"
  region              = var.old_region
  profile             = var.old_profile
  allowed_account_ids = [var.old_account_id]

  dynamic "assume_role" {
    for_each = var.old_role_arn == null ? [] : [var.old_role_arn]
    content {
      role_arn     = assume_role.value
      session_name = "fanout-terraform"
    }
  }
}
