#!/usr/bin/env bash
# Builds every Lambda of lambdas/ as target/lambda/<name>/bootstrap.zip (provided.al2023), which
# the Terraform modules deploy: `cargo lambda build --release --arm64 --output-format zip`.
# Installs what is missing: cargo-lambda (pinned, from PyPI, with zig) into .local/venv, and
# the Rust target through rustup.
#   FANOUT_LAMBDA_ARCH=x86_64   build for x86_64 instead of arm64 (then set the modules'
#                               `architecture = "x86_64"` to match)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
# shellcheck source=../infra/local/versions.env
. infra/local/versions.env

arch="${FANOUT_LAMBDA_ARCH:-arm64}"
case "$arch" in
  arm64) target=aarch64-unknown-linux-gnu flag=--arm64 ;;
  x86_64) target=x86_64-unknown-linux-gnu flag=--x86-64 ;;
  *) echo "build-lambdas.sh: FANOUT_LAMBDA_ARCH=$arch: expected arm64 or x86_64" >&2; exit 2 ;;
esac

venv="$ROOT/.local/venv"
stamp="$ROOT/.local/stamps/cargo-lambda"
if [ ! -x "$venv/bin/cargo-lambda" ] || [ "$(cat "$stamp" 2>/dev/null)" != "cargo-lambda==$CARGO_LAMBDA_VERSION" ]; then
  echo "== Installing cargo-lambda $CARGO_LAMBDA_VERSION (with zig) into .local/venv"
  mkdir -p "$ROOT/.local/log" "$(dirname "$stamp")"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check --quiet \
    "cargo-lambda==$CARGO_LAMBDA_VERSION" >"$ROOT/.local/log/cargo-lambda-install.log" 2>&1 \
    || { tail -n 30 "$ROOT/.local/log/cargo-lambda-install.log" >&2; exit 1; }
  echo "cargo-lambda==$CARGO_LAMBDA_VERSION" >"$stamp"
fi
export PATH="$venv/bin:$PATH"

if ! rustup target list --installed | grep -qx "$target"; then
  echo "== Adding the Rust target $target"
  if ! rustup target add "$target"; then
    echo "build-lambdas.sh: cannot add the Rust target $target (rustup needs static.rust-lang.org)." >&2
    echo "  Run this where rustup can download it, or build for x86_64 on this machine:" >&2
    echo "  FANOUT_LAMBDA_ARCH=x86_64 scripts/build-lambdas.sh, and set architecture = \"x86_64\" in the modules." >&2
    exit 1
  fi
fi

packages=()
for dir in lambdas/*/; do packages+=(--package "$(basename "$dir")"); done
echo "== cargo lambda build --release $flag --output-format zip ${packages[*]}"
cargo lambda build --release "$flag" --output-format zip "${packages[@]}"

echo
echo "Lambda packages ($arch, provided.al2023):"
for dir in lambdas/*/; do
  zip="target/lambda/$(basename "$dir")/bootstrap.zip"
  [ -f "$zip" ] || { echo "build-lambdas.sh: $zip was not produced" >&2; exit 1; }
  printf '  %s  %s bytes\n' "$ROOT/$zip" "$(stat -c %s "$zip")"
done
