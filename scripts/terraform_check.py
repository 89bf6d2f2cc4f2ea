#!/usr/bin/env python3
"""Static checks of terraform/ against the Rust code (no terraform binary can run here).

1. Every .tf file parses (python-hcl2, the parser checkov uses).
2. Environment: the variables each Lambda reads, taken from the Rust code it uses, are exactly
   the keys its module sets in `local.environment`.
3. IAM: every AWS action the code calls is granted to the identity that calls it, and no
   data-plane action is granted on "*" (nor any action by wildcard).

Where the AWS actions come from: the adapters in src/aws/ are split into functions; every SDK
call in a function (`.put_records()`, ...) is looked up in the SDK crates' own operation lists
(from Cargo.lock's versions in the cargo registry) to find its service, which gives the IAM
action. `IDENTITIES` below says which adapter functions each deployed identity runs; every
adapter function that calls AWS must be listed there or in `NOT_DEPLOYED`, so new code cannot
slip past the check. Exits 1 with one line per problem.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from pathlib import Path

import hcl2

ROOT = Path(__file__).resolve().parent.parent
TF = ROOT / "terraform"
problems: list[str] = []


def problem(text: str) -> None:
    if text not in problems:
        problems.append(text)


# --- Rust side ---------------------------------------------------------------------------


def code_of(path: Path) -> str:
    """The non-test code of a Rust file, without comments (none for a `tests.rs` module, nor for
    a file under a `tests/` directory of src/)."""
    src = ROOT / "src"
    if path.name == "tests.rs" or (path.is_relative_to(src) and "tests" in path.relative_to(src).parts[:-1]):
        return ""
    text = path.read_text()
    text = text.split("#[cfg(test)]")[0]
    return "\n".join(re.sub(r"//.*", "", line) for line in text.splitlines())


def module_file(segments: list[str]) -> Path | None:
    """src/a/b.rs or src/a/b/mod.rs for the longest prefix of `segments` that has one."""
    for n in range(len(segments), 0, -1):
        base = ROOT / "src" / Path(*segments[:n])
        for candidate in (base.with_suffix(".rs"), base / "mod.rs"):
            if candidate.is_file():
                return candidate
    return None


def library_files_named_by(code: str) -> set[Path]:
    """The library files a Lambda crate names (`fanout::a::b`, `fanout::a::{b, c}`)."""
    files: set[Path] = set()
    for m in re.finditer(r"fanout((?:::\w+)+)(?:::\{([^}]*)\})?", code):
        head = [s for s in m.group(1).split("::") if s]
        tails = [t.strip() for t in (m.group(2) or "").split(",") if t.strip()] or [""]
        for tail in tails:
            segs = head + [s for s in tail.split("::") if s and s[0].islower()]
            f = module_file(segs)
            if f:
                files.add(f)
                # A module's submodules (`a/mod.rs` or `a.rs` beside `a/`) are part of it.
                sub = f.parent if f.name == "mod.rs" else f.with_suffix("")
                if sub.is_dir():
                    files |= set(sub.rglob("*.rs"))
    return files


ENV_RE = re.compile(r'"(FANOUT_[A-Z0-9_]+)"')


def env_read_by_lambdas() -> dict[str, set[str]]:
    """Per Lambda crate: the FANOUT_* variables named in its code and the library files it uses."""
    reads: dict[str, set[str]] = {}
    attributed: set[Path] = set()
    for main in sorted(ROOT.glob("lambdas/*/src/main.rs")):
        name = main.parent.parent.name
        code = code_of(main)
        files = library_files_named_by(code)
        attributed |= files
        names = set(ENV_RE.findall(code))
        for f in files:
            names |= set(ENV_RE.findall(code_of(f)))
        reads[name] = names
    # A library file that reads a variable but that no Lambda names directly would escape
    # this check: keep environment reads where the Lambda crates can see them.
    for f in sorted((ROOT / "src").rglob("*.rs")):
        if "bin" in f.relative_to(ROOT / "src").parts or f in attributed:
            continue
        found = sorted(set(ENV_RE.findall(code_of(f))))
        if found:
            problem(
                f"{f.relative_to(ROOT)} reads {', '.join(found)} but no Lambda crate names it: "
                "read configuration in src/config.rs (or name the module from lambdas/*/src/main.rs)"
            )
    return reads


# SDK operations are found by their method call; AssumeRoleProvider assumes a role.
CALL_RE = re.compile(r"\.([a-z][a-z0-9_]*)\(\)")
FN_RE = re.compile(r"^(\s*)(?:pub(?:\([\w:]+\))?\s+)?(?:async\s+)?fn\s+(\w+)")
IMPL_RE = re.compile(r"^impl(?:<[^>]*>)?\s+(?:[\w:<>, ]+\s+for\s+)?(\w+)")
SERVICES = {"kinesis": "kinesis", "dynamodb": "dynamodb", "s3": "s3", "sts": "sts"}
# Where an IAM action is not the operation's name.
ACTION_NAMES = {"s3:ListObjectsV2": "s3:ListBucket"}
# Operations no policy can grant or deny.
NEEDS_NO_GRANT = {"sts:GetCallerIdentity"}


def sdk_operations() -> dict[str, str]:
    """operation (snake case) → service prefix, from the SDK crates Cargo.lock pins."""
    lock = (ROOT / "Cargo.lock").read_text()
    cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    ops: dict[str, str] = {}
    for crate, service in SERVICES.items():
        m = re.search(rf'name = "aws-sdk-{crate}"\nversion = "([^"]+)"', lock)
        if not m:
            problem(f"Cargo.lock has no aws-sdk-{crate}")
            continue
        dirs = glob.glob(str(cargo_home / "registry/src/*" / f"aws-sdk-{crate}-{m.group(1)}" / "src/operation"))
        if not dirs:
            problem(f"aws-sdk-{crate} {m.group(1)} is not in {cargo_home}/registry: run `cargo fetch` first")
            continue
        for op in os.listdir(dirs[0]):
            if (Path(dirs[0]) / op).is_dir():
                if op in ops and ops[op] != service:
                    ops[op] = "ambiguous"
                else:
                    ops[op] = service
    return ops


def pascal(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))


def adapter_actions(ops: dict[str, str]) -> dict[str, set[str]]:
    """"file::Type::function" (or "file::function") → IAM actions its body calls."""
    found: dict[str, set[str]] = {}
    for f in sorted((ROOT / "src/aws").glob("*.rs")):
        rel = f.relative_to(ROOT).as_posix()
        impl = None
        current = None
        for line in code_of(f).splitlines():
            m = IMPL_RE.match(line)
            if m:
                impl = m.group(1)
            m = FN_RE.match(line)
            if m:
                inside_impl = impl is not None and m.group(1) != ""
                if m.group(1) == "":
                    impl = None
                current = f"{rel}::{impl}::{m.group(2)}" if inside_impl else f"{rel}::{m.group(2)}"
            if current is None:
                continue
            calls = CALL_RE.findall(line)
            if "AssumeRoleProvider" in line:
                calls.append("assume_role")
            for call in calls:
                service = ops.get(call)
                if service is None:
                    continue
                if service == "ambiguous":
                    problem(f"{current}: .{call}() exists in several AWS SDKs; this check cannot tell which")
                    continue
                action = f"{service}:{pascal(call)}"
                found.setdefault(current, set()).add(ACTION_NAMES.get(action, action))
    return found


# Which adapter functions each deployed identity runs. "writer" is the old account's identity
# (the writer role, or the replicator's/controller's own role where the target streams carry
# a resource policy); its actions live in modules/writer-access `local.writer_actions`.
IDENTITIES: dict[str, dict] = {
    "replicator": {
        "module": "replicator",
        "functions": [
            "src/aws/checkpoints.rs::DynamoCheckpoints::load",
            "src/aws/checkpoints.rs::DynamoCheckpoints::advance",
            "src/aws/table.rs::mode_item",
            "src/aws/table.rs::write_heartbeat",
            "src/aws/dead_letters.rs::S3DeadLetters::store",
            "src/aws/target.rs::KinesisTarget::new",  # assumes the writer role
        ],
    },
    "controller": {
        "module": "controller",
        "functions": [
            "src/aws/table.rs::mode_item",
            "src/aws/control.rs::AwsControl::load",
            "src/aws/control.rs::AwsControl::write_state",
            "src/aws/control.rs::AwsControl::append_history",
            "src/aws/control.rs::AwsControl::query",
            "src/aws/control.rs::AwsControl::migrations",
            "src/aws/control.rs::AwsControl::set_mode",
            "src/aws/control.rs::AwsControl::stream_facts",
            "src/aws/control.rs::AwsControl::acknowledge",
            "src/aws/routing.rs::S3Routing::publish",
            "src/aws/routing.rs::S3Routing::fetch",
            # the dead-letter guard lists dead letters and on-failure objects
            "src/aws/dead_letters.rs::S3DeadLetters::list_prefix",
            "src/aws/verifications.rs::latest",
            "src/aws/verifications.rs::caller_identity",
            "src/aws/verifications.rs::assumed_role_config",
            # the lag probe reads the first unreplicated record of each shard
            "src/aws/source.rs::KinesisSource::list_shards",
            "src/aws/source.rs::KinesisSource::shard_iterator",
            "src/aws/source.rs::KinesisSource::get_records",
            # the capacity guard reads the newest window of each source shard
            "src/aws/target.rs::list_open_shards",
        ],
    },
    "writer": {
        "module": "writer-access",
        "locals": "writer_actions",
        "functions": [
            "src/aws/target.rs::KinesisTarget::target_info",
            "src/aws/target.rs::list_open_shards",  # the shard map pacing follows (and capacity)
            "src/aws/target.rs::KinesisTarget::put_records",
            "src/aws/control.rs::AwsControl::stream_facts",  # the streams guard
            # the capacity guard: the target's shard count
            "src/aws/capacity.rs::open_shard_count",
        ],
    },
    # With `start --reverse` the lag probe reads the old streams too.
    "writer-reverse": {
        "module": "writer-access",
        "locals": "reverse_read_actions",
        "functions": [
            "src/aws/source.rs::KinesisSource::list_shards",
            "src/aws/source.rs::KinesisSource::shard_iterator",
            "src/aws/source.rs::KinesisSource::get_records",
        ],
    },
}
# Adapter functions only fanoutctl runs locally or with an engineer's own credentials
# (replicate, backfill, redrive, verify, the benches); no deployed role needs them.
NOT_DEPLOYED = {
    "src/aws/table.rs::create_table": "the local stack's set-up and the tests",
    "src/aws/dead_letters.rs::S3DeadLetters::get_bytes": "redrive (dead letters, on-failure objects)",
    "src/aws/dead_letters.rs::S3DeadLetters::delete": "redrive",
    "src/aws/dead_letters.rs::S3DeadLetters::put_json": "redrive's report",
    "src/aws/leases.rs::DynamoLeases::query_all": "fanoutctl replicate's leases",
    "src/aws/leases.rs::DynamoLeases::shard_heartbeat": "fanoutctl replicate's leases",
    "src/aws/leases.rs::DynamoLeases::fenced": "fanoutctl replicate's leases",
    "src/aws/leases.rs::DynamoLeases::close_epoch": "fanoutctl replicate's leases",
    "src/aws/leases.rs::DynamoLeases::acquire": "fanoutctl replicate's leases",
    "src/aws/source.rs::KinesisSource::put_all": "the demo's and benches' producer",
    "src/aws/source.rs::KinesisSource::create_stream": "the benches",
    "src/aws/source.rs::KinesisSource::wait_active": "the benches",
    "src/aws/source.rs::KinesisSource::ensure_consumer": "fanoutctl replicate --efo",
    "src/aws/source.rs::KinesisSource::subscribe": "fanoutctl replicate --efo",
    "src/aws/verifications.rs::store": "fanoutctl verify",
}


# --- Terraform side ----------------------------------------------------------------------


def parse_all() -> dict[Path, dict]:
    parsed: dict[Path, dict] = {}
    files = sorted(TF.rglob("*.tf"))
    if not files:
        problem("no .tf files under terraform/")
    for f in files:
        if ".terraform" in f.parts:
            continue
        try:
            with f.open() as fh:
                parsed[f] = hcl2.load(fh)
        except Exception as e:  # the parser raises several types; all mean "does not parse"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            problem(f"{f.relative_to(ROOT)}: does not parse: {first}")
    return parsed


def module_docs(parsed: dict[Path, dict], module: str) -> list[dict]:
    return [doc for f, doc in parsed.items() if f.parent == TF / "modules" / module]


def unwrap(value):
    """The parser wraps some attribute values in a one-element list."""
    while isinstance(value, list) and len(value) == 1 and isinstance(value[0], (dict, list)):
        value = value[0]
    return value


def locals_of(docs: list[dict]) -> dict:
    out: dict = {}
    for doc in docs:
        for block in doc.get("locals", []):
            out.update({k: unwrap(v) for k, v in block.items()})
    return out


def resolve_list(value, local_values: dict) -> list:
    """A list of strings from a literal list, `${local.x}`, or a mix; unknown parts dropped."""
    if isinstance(value, str):
        m = re.fullmatch(r"\$\{local\.(\w+)\}", value.strip())
        if m and m.group(1) in local_values:
            return resolve_list(local_values[m.group(1)], local_values)
        m = re.fullmatch(r"\$\{concat\((.*)\)\}", value.strip(), re.S)
        if m:
            out = []
            for part in re.findall(r"local\.(\w+)|\"([^\"]+)\"", m.group(1)):
                if part[0] and part[0] in local_values:
                    out += resolve_list(local_values[part[0]], local_values)
                elif part[1]:
                    out.append(part[1])
            return out
        return [value]
    if isinstance(value, list):
        out = []
        for v in value:
            out += resolve_list(v, local_values)
        return out
    return []


def statements(docs: list[dict]):
    """(document name, statement) for every statement, plain or dynamic, of every
    aws_iam_policy_document in the module."""
    for doc in docs:
        for data in doc.get("data", []):
            for name, body in data.get("aws_iam_policy_document", {}).items():
                for st in body.get("statement", []):
                    yield name, st
                for dyn in body.get("dynamic", []):
                    for content in dyn.get("statement", {}).get("content", []):
                        yield name, content


DATA_PLANE = ("kinesis:", "dynamodb:", "s3:", "kms:", "sts:")


def granted_actions(module: str, docs: list[dict]) -> set[str]:
    local_values = locals_of(docs)
    granted: set[str] = set()
    for name, st in statements(docs):
        actions = resolve_list(st.get("actions", []), local_values)
        resources = resolve_list(st.get("resources", []), local_values)
        sid = str(unwrap(st.get("sid", "(no sid)"))).strip("[]'\"")
        if str(unwrap(st.get("effect", "Allow"))).strip("[]'\" ") == "Deny":
            continue  # a deny (e.g. of every s3 action without TLS) grants nothing
        for a in actions:
            if "*" in a:
                problem(f"modules/{module} {name}/{sid}: action {a!r} is a wildcard; name each action")
        if any(r.strip() == "*" for r in resources) and any(a.startswith(DATA_PLANE) for a in actions):
            problem(f"modules/{module} {name}/{sid}: data-plane actions {actions} granted on \"*\"")
        # A trust policy grants nothing to the role itself.
        if "principals" in st and actions == ["sts:AssumeRole"] and not resources:
            continue
        granted |= set(actions)
    return granted


def environment_keys(docs: list[dict]) -> set[str] | None:
    env = locals_of(docs).get("environment")
    return set(env) if isinstance(env, dict) else None


# --- the checks ----------------------------------------------------------------------------


def check_environment(parsed: dict[Path, dict]) -> None:
    for lam, reads in env_read_by_lambdas().items():
        docs = module_docs(parsed, lam)
        if not docs:
            problem(f"lambdas/{lam} has no module terraform/modules/{lam}")
            continue
        keys = environment_keys(docs)
        if keys is None:
            problem(f"modules/{lam}: no `locals {{ environment = {{ ... }} }}` map with the Lambda's variables")
            continue
        text = "".join((TF / "modules" / lam / f.name).read_text() for f in (TF / "modules" / lam).glob("*.tf"))
        if "local.environment" not in text:
            problem(f"modules/{lam}: the function's environment does not come from local.environment")
        for v in sorted(reads - keys):
            problem(f"modules/{lam}: lambdas/{lam} reads {v} but local.environment does not set it")
        for v in sorted(keys - reads):
            problem(f"modules/{lam}: local.environment sets {v} but lambdas/{lam} never reads it")
        print(f"environment  {lam:<11} {len(reads)} variables read by the code, {len(keys)} set by the module")


def check_iam(parsed: dict[Path, dict]) -> None:
    ops = sdk_operations()
    if not ops:
        return
    actions = adapter_actions(ops)
    listed = {f for ident in IDENTITIES.values() for f in ident["functions"]} | set(NOT_DEPLOYED)
    for fn in sorted(set(actions) - listed):
        problem(
            f"{fn} calls {', '.join(sorted(actions[fn]))}: add it to IDENTITIES (the role that runs it) "
            "or NOT_DEPLOYED in scripts/terraform_check.py, and grant it in that module"
        )
    for fn in sorted(listed - set(actions)):
        problem(f"scripts/terraform_check.py lists {fn}, which calls no AWS operation (renamed or removed?)")
    for ident, spec in IDENTITIES.items():
        module = spec["module"]
        docs = module_docs(parsed, module)
        if not docs:
            problem(f"terraform/modules/{module} is missing")
            continue
        granted = granted_actions(module, docs)
        needed = set()
        for fn in spec["functions"]:
            needed |= actions.get(fn, set())
        needed -= NEEDS_NO_GRANT
        if "locals" in spec:
            name = spec["locals"]
            listed_actions = set(resolve_list(locals_of(docs).get(name, []), {}))
            for a in sorted(needed - listed_actions):
                problem(f"modules/{module}: the code calls {a} in the old account; local.{name} lacks it")
            granted = listed_actions
        for a in sorted(needed - granted):
            users = [fn for fn in spec["functions"] if a in actions.get(fn, set())]
            problem(f"modules/{module}: {ident} calls {a} ({', '.join(users)}) but no policy grants it")
        print(f"iam          {ident:<11} {len(needed)} actions called by the code, all granted: {sorted(needed)}"
              if not (needed - granted) else f"iam          {ident:<11} missing {sorted(needed - granted)}")
    modules = (TF / "modules").iterdir() if (TF / "modules").is_dir() else []
    for module in sorted(p.name for p in modules if p.is_dir()):
        granted_actions(module, module_docs(parsed, module))  # wildcard checks everywhere


def check_skips() -> None:
    """Every checkov skip carries a reason a reviewer can read."""
    for f in sorted(TF.rglob("*.tf")):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            m = re.search(r"checkov:skip=([A-Z0-9_]+)(?::(.*))?", line)
            if m and len((m.group(2) or "").strip()) < 15:
                problem(f"{f.relative_to(ROOT)}:{n}: checkov skip {m.group(1)} without a reason")


def main() -> int:
    parsed = parse_all()
    print(f"parse        {len(parsed)} .tf files")
    check_environment(parsed)
    check_iam(parsed)
    check_skips()
    for p in problems:
        print(f"FAIL: {p}")
    print("terraform checks: " + (f"{len(problems)} problem(s)" if problems else "PASS"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
