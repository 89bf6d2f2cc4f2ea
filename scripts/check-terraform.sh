#!/usr/bin/env bash
# Checks of terraform/. First the static ones, which need no terraform binary: the configuration
# is parsed and checked against the Rust code (scripts/terraform_check.py: every .tf parses; each
# Lambda's environment matches the variables its code reads; every AWS action the code calls is
# granted, none on "*"; the on-call role can run every runbook command, in both accounts; its
# session names are people), the READMEs' Inputs and Outputs tables are checked against
# variables.tf and outputs.tf (scripts/check_module_docs.py), then checkov runs over every module
# and the example. Installs checkov (pinned, own venv under .local/) on first run; python-hcl2
# comes with it.
# Then, where the machine has a terraform binary (>= 1.7) on PATH and an AWS provider mirror
# (FANOUT_TF_PROVIDER_MIRROR, default /opt/tf-plugins, unpacked layout), the example's plan tests
# (terraform/examples/two-account/tests/*.tftest.hcl: `terraform test`, plan only, both AWS
# providers mocked) run offline: providers come from the mirror only, in a copy of terraform/
# under .local/tfplan/, so no .terraform/ or lock file lands in the checkout. Without terraform or
# the mirror they are skipped with a loud SKIPPED line, and the script does not fail for that.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
# shellcheck source=../infra/local/versions.env
. infra/local/versions.env
venv="$ROOT/.local/tfvenv"
stamp="$ROOT/.local/stamps/checkov"
if [ ! -x "$venv/bin/checkov" ] || [ "$(cat "$stamp" 2>/dev/null)" != "checkov==$CHECKOV_VERSION" ]; then
  echo "== Installing checkov $CHECKOV_VERSION into .local/tfvenv (first run only)"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check --quiet "checkov==$CHECKOV_VERSION" \
    >"$ROOT/.local/log/checkov-install.log" 2>&1 \
    || { tail -n 30 "$ROOT/.local/log/checkov-install.log"; exit 1; }
  mkdir -p "$(dirname "$stamp")"
  echo "checkov==$CHECKOV_VERSION" >"$stamp"
fi
# The IAM check reads the AWS SDK crates' operation lists from the cargo registry.
cargo fetch --locked --quiet
static=0
"$venv/bin/python" scripts/terraform_check.py || static=1
echo "== module READMEs"
"$venv/bin/python" scripts/check_module_docs.py || static=1
[ "$static" = 0 ] || exit 1
echo "== checkov"
status=0
for dir in terraform/modules/*/ terraform/examples/*/; do
  out="$("$venv/bin/checkov" --directory "$dir" --framework terraform --quiet --compact \
    --skip-download --output cli 2>&1)" || status=1
  summary="$(printf '%s\n' "$out" | grep -E '^Passed checks' || echo "no checks ran")"
  printf '%-40s %s\n' "$dir" "$summary"
  if printf '%s\n' "$out" | grep -q '^Check: '; then printf '%s\n' "$out"; fi
done
[ "$status" = 0 ] || { echo "checkov: failed checks above (fix them, or skip inline with a reason)"; exit 1; }
echo "checkov: PASS"

echo "== terraform plan tests"
mirror="${FANOUT_TF_PROVIDER_MIRROR:-/opt/tf-plugins}"
if ! command -v terraform >/dev/null 2>&1 || [ ! -d "$mirror/registry.terraform.io/hashicorp/aws" ]; then
  echo "terraform plan tests: SKIPPED (no terraform binary / provider mirror on this machine)"
  exit 0
fi
work="$ROOT/.local/tfplan"
log="$ROOT/.local/log/terraform-test.log"
mkdir -p "$work" "$(dirname "$log")"
# The mirror only: a provider it lacks fails init instead of being downloaded.
printf 'provider_installation {\n  filesystem_mirror {\n    path = "%s"\n  }\n}\n' "$mirror" >"$work/cli.tfrc"
started=$SECONDS
(
  # Nothing from the caller's Terraform set-up (variable values, extra arguments, data dir) counts.
  while IFS= read -r name; do unset "$name"; done < <(compgen -e | grep -E '^TF_(VAR_|CLI_ARGS|DATA_DIR$|WORKSPACE$|PLUGIN_CACHE)' || true)
  export TF_CLI_CONFIG_FILE="$work/cli.tfrc" CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
  version="$(terraform version -json | sed -n 's/.*"terraform_version": *"\([^"]*\)".*/\1/p')"
  if [ -z "$version" ] || [ "$(printf '%s\n' 1.7.0 "$version" | sort -V | head -n 1)" != 1.7.0 ]; then
    echo "terraform plan tests: SKIPPED (terraform ${version:-of unknown version} on this machine; mock_provider needs >= 1.7)"
    exit 0
  fi
  # A fresh copy of the configuration, without anyone's working files or variable values.
  rm -rf "$work/terraform"
  tar -C "$ROOT" --exclude=.terraform --exclude=.terraform.lock.hcl --exclude='*.tfstate' \
    --exclude='*.tfstate.*' --exclude='*.tfplan' --exclude=terraform.tfvars --exclude='*.auto.tfvars' \
    -cf - terraform | tar -C "$work" -xf -
  # The Lambda zips are only hashed at plan time: an empty zip stands in for both.
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1], "w").close()' "$work/bootstrap.zip"
  cd "$work/terraform/examples/two-account"
  if ! terraform init -backend=false -input=false -no-color >"$log" 2>&1; then
    grep -v '^$' "$log" | tail -n 40
    echo "(terraform init failed: is the mirror's hashicorp/aws version within versions.tf's constraint?)"
    exit 1
  fi
  status=0
  out="$(terraform test -no-color -var "replicator_package_path=$work/bootstrap.zip" \
    -var "controller_package_path=$work/bootstrap.zip" 2>&1)" || status=1
  printf '%s\n' "$out" >>"$log"
  passed="$(printf '%s\n' "$out" | sed -n 's/^Success! \([0-9]*\) passed, 0 failed\.$/\1/p')"
  if [ "$status" != 0 ] || [ "${passed:-0}" -eq 0 ]; then
    printf '%s\n' "$out" | tail -n 100
    [ "$status" != 0 ] || echo "(no plan test ran)"
    exit 1
  fi
  echo "terraform plan tests: PASS ($passed passed, $((SECONDS - started)) s)"
) || {
  echo "terraform plan tests: FAIL ($((SECONDS - started)) s; full output in .local/log/terraform-test.log)"
  exit 1
}
