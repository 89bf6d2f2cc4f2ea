#!/usr/bin/env bash
# Static checks of terraform/: no terraform binary can be installed on these machines, so the
# configuration is parsed and checked against the Rust code instead (scripts/terraform_check.py:
# every .tf parses; each Lambda's environment matches the variables its code reads; every AWS
# action the code calls is granted, none on "*"; the on-call role can run every runbook command,
# in both accounts; its session names are people), the READMEs' Inputs and Outputs tables are
# checked against variables.tf and outputs.tf (scripts/check_module_docs.py), then checkov runs
# over every module and the example. Installs checkov (pinned, own venv under .local/) on first
# run; python-hcl2 comes with it.
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
