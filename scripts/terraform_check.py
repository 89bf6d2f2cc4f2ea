#!/usr/bin/env python3
"""Static checks of terraform/ against the Rust code (no terraform binary can run here).

1. Every .tf file parses (python-hcl2, the parser checkov uses).
2. Environment: the variables each Lambda reads, taken from the Rust code it uses, are exactly
   the keys its module sets in `local.environment`.
3. IAM: every AWS action the code calls is granted to the identity that calls it, and no
   data-plane action is granted on "*" (nor any action by wildcard).
4. The on-call role: every command of docs/runbook.md (`RUNBOOK_COMMANDS`: the adapter
   functions each runs, and where) is covered by the grants Terraform gives that role, in the
   new account (its own policies, per S3 key prefix) and in the old one (the writer role, the
   read role, or the streams' resource policies, with the example wiring the on-call role into
   writer-access; the consumers role for the old streams' Lambda consumers; a KCL
   application's role for `consumers move`), in both access modes; failures name the command,
   the action and the Terraform resource to add it to.
5. Two-person rule: the on-call role's trust policy makes the session name the caller's IAM
   user name, and the controller has an IAM-authenticated function URL.

Where the AWS actions come from: the adapters in src/aws/ are split into functions; every SDK
call in a function (`.put_records()`, ...) is looked up in the SDK crates' own operation lists
(from Cargo.lock's versions in the cargo registry) to find its service, which gives the IAM
action. `IDENTITIES` below says which adapter functions each deployed identity runs, and
`RUNBOOK_COMMANDS` which ones each runbook command runs under the on-call role; every adapter
function that calls AWS must be listed in one of them or in `NOT_DEPLOYED`, so new code cannot
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


# Variables a Lambda crate reaches in a library file it names only through a parent module
# (`fanout::aws::{build_handler, ...}` takes in all of src/aws/), but that no code it runs
# reads: its module must not set them. Lambda crate → variable → why.
ENV_NOT_READ: dict[str, dict[str, str]] = {
    "replicator": {
        "FANOUT_OLD_CONSUMERS_ROLE_ARN": "only src/aws/verifications.rs `old_lambda_config` reads it, "
        "which the controller and fanoutctl call; build_handler never does",
    },
}


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
        for v, why in ENV_NOT_READ.get(name, {}).items():
            if v not in names:
                problem(f"scripts/terraform_check.py: ENV_NOT_READ[{name!r}] lists {v}, which lambdas/{name} does not reach any more: remove it")
        reads[name] = names - set(ENV_NOT_READ.get(name, {}))
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
SERVICES = {"kinesis": "kinesis", "dynamodb": "dynamodb", "s3": "s3", "sts": "sts", "lambda": "lambda"}
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
            "src/aws/checkpoints.rs::DynamoCheckpoints::record_position",
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
            # Lambda consumers of the new streams: found and registered at start
            # (FANOUT_CONSUMERS), read by the consumers guard and status, switched by flips
            "src/aws/lambda.rs::Mappings::list",
            "src/aws/lambda.rs::Mappings::get",
            "src/aws/lambda.rs::Mappings::enable",
            # the commit moves consumers of the old streams (moves_to_function): a mapping on
            # the new stream, from where the old one stopped, found with the position map
            # (positions.rs `PositionMap::shard_positions`, whose Query is table.rs `query_pk`)
            # and the new stream's shards
            "src/aws/lambda.rs::Mappings::create",
            "src/aws/table.rs::query_pk",
            "src/aws/positions.rs::stream_shards",
        ],
    },
    # Lambda consumers of the old streams: their mappings are in the old account, found, read
    # and switched (off at the commit) through writer-access's consumers role
    # (FANOUT_OLD_CONSUMERS_ROLE_ARN, verifications.rs `old_lambda_config`), in both access
    # modes. The controller's side (sts:AssumeRole) is verifications.rs::assumed_role_config.
    "old-consumers": {
        "module": "writer-access",
        "role": "consumers",
        "functions": [
            "src/aws/lambda.rs::Mappings::list",
            "src/aws/lambda.rs::Mappings::get",
            "src/aws/lambda.rs::Mappings::enable",
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
# Adapter functions no deployed identity runs: the local stack, the benches, and the fanoutctl
# commands that stand in for the replicator (replicate, backfill), which run with the
# replicator's or an administrator's credentials, never the on-call role's (RUNBOOK_OUTSIDE).
NOT_DEPLOYED = {
    "src/aws/table.rs::create_table": "the local stack's set-up and the tests",
    "src/aws/leases.rs::DynamoLeases::shard_heartbeat": "fanoutctl replicate's leases",
    "src/aws/leases.rs::DynamoLeases::fenced": "fanoutctl replicate's leases",
    "src/aws/leases.rs::DynamoLeases::close_epoch": "fanoutctl replicate's leases",
    "src/aws/leases.rs::DynamoLeases::acquire": "fanoutctl replicate's leases",
    "src/aws/source.rs::KinesisSource::put_all": "the demo's and benches' producer",
    "src/aws/source.rs::KinesisSource::create_stream": "the benches",
    "src/aws/source.rs::KinesisSource::wait_active": "the benches",
    "src/aws/source.rs::KinesisSource::ensure_consumer": "fanoutctl replicate --efo",
    "src/aws/source.rs::KinesisSource::subscribe": "fanoutctl replicate --efo",
    # A KCL application's own lease table, in its own account: `consumers move` needs that
    # table's grants, which no module of ours deploys (docs/runbook.md says so): its owners give
    # them to a role the on-call role assumes (--kcl-role-arn), and that assume step is checked
    # (ASSUME_KCL in RUNBOOK_COMMANDS["consumers"]).
    "src/aws/kcl.rs::KclTable::leases": "the application's lease table (consumers move)",
    "src/aws/kcl.rs::KclTable::put": "the application's lease table (consumers move)",
    "src/aws/kcl.rs::KclTable::delete": "the application's lease table (consumers move)",
}

# --- The on-call role: every runbook command ---------------------------------------------------
#
# docs/runbook.md is run by an on-call engineer under the on-call role (modules/controller's
# `oncall` role), as `fanoutctl`. Each command is listed with the adapter functions it runs
# (read from src/bin/fanoutctl/, src/control/, src/verify/, src/redrive/, src/aws/) and where
# each acts, which says whose grants it needs:
NEW = "new"  # the new account, with the on-call role's own credentials
ASSUME_WRITER = "assume the writer role"  # FANOUT_WRITER_ROLE_ARN (role mode only)
ASSUME_READER = "assume the read role"  # verify --target-role-arn (role mode only)
WRITER = "old streams as the writer"  # the writer role, or the streams' policies (trusted_role_arns)
WRITER_REVERSE = "old streams as the writer, reverse replication"  # with writer-access reverse_replication
READER = "old streams as a reader"  # the read role, or the streams' policies (reader_trusted_role_arns)
ASSUME_OLD_CONSUMERS = "assume the consumers role"  # FANOUT_OLD_CONSUMERS_ROLE_ARN (both modes)
OLD_CONSUMERS = "old account's mappings"  # through the consumers role (consumers_trusted_role_arns), both modes
ASSUME_KCL = "assume a KCL application's role"  # consumers move --kcl-role-arn (the controller's kcl_role_arns), both modes

# S3 objects an action touches (a statement must cover each), as the key pattern under the
# bucket; for s3:ListBucket, the s3:prefix the listing uses.
LOCATIONS = {
    "dead letters": "${var.dead_letter_prefix}/*",
    "discarded batches": "aws/lambda/*",  # the event source mapping's on-failure records
    "routing documents": "routing/*",
}
S3_OBJECT_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}


def step(function: str, where: str = NEW, on: tuple[str, ...] = ()) -> tuple[str, str, tuple[str, ...]]:
    return (f"src/aws/{function}", where, on)


# Every migration command builds its context first (src/bin/fanoutctl/control.rs `context`):
# the caller's identity, and the old account's configuration (the writer role's credentials).
CONTEXT = [
    step("verifications.rs::caller_identity"),
    step("verifications.rs::assumed_role_config", ASSUME_WRITER),  # old_account_config
    step("verifications.rs::assumed_role_config", ASSUME_OLD_CONSUMERS),  # old_lambda_config
]
# The migration's state item; when there is none, the message lists the migrations that exist
# (commands/mod.rs `load`).
LOAD = [step("control.rs::AwsControl::load"), step("control.rs::AwsControl::migrations")]
# The lag of every shard of a direction (AwsControl::lag): checkpoints and heartbeats, then the
# first record after each checkpoint. Reverse routes read the old streams.
LAG = [
    step("control.rs::AwsControl::query"),
    step("source.rs::KinesisSource::list_shards"),
    step("source.rs::KinesisSource::shard_iterator"),
    step("source.rs::KinesisSource::get_records"),
    step("source.rs::KinesisSource::list_shards", WRITER_REVERSE),
    step("source.rs::KinesisSource::shard_iterator", WRITER_REVERSE),
    step("source.rs::KinesisSource::get_records", WRITER_REVERSE),
]
# Dead letters and discarded batches not acknowledged (commands/checks.rs `unacknowledged`).
UNACKNOWLEDGED = [
    step("control.rs::AwsControl::query"),
    step("dead_letters.rs::S3DeadLetters::list_prefix", on=("dead letters", "discarded batches")),
]
# What every flip reads (commands/flip.rs, checks.rs): the state item and the guards `lag`,
# `streams` (both sides' summaries), `dead_letters` and `verification`. A dry run (`plan`,
# `--dry-run`) stops there.
GUARDS = (
    CONTEXT
    + LOAD
    + LAG
    + UNACKNOWLEDGED
    + [
        step("control.rs::AwsControl::stream_facts"),
        step("control.rs::AwsControl::stream_facts", WRITER),
        step("verifications.rs::latest"),
        step("lambda.rs::Mappings::get"),  # the consumers guard
        step("lambda.rs::Mappings::get", OLD_CONSUMERS),  # ...of the old streams' consumers
    ]
)
# ...and what it writes: the state item, the hold and release (routing document, modes), the
# history, the Lambda consumers' mappings. An abandoned flip is released the same way.
FLIP = GUARDS + [
    step("lambda.rs::Mappings::enable"),
    step("lambda.rs::Mappings::enable", OLD_CONSUMERS),
    step("control.rs::AwsControl::write_state"),
    step("control.rs::AwsControl::set_mode"),
    step("routing.rs::S3Routing::publish", on=("routing documents",)),
    step("control.rs::AwsControl::append_history"),
]
# The commit also moves the old streams' consumers that have a moves_to_function
# (commands/consumers.rs `move_consumer`): unless the function has a mapping on the new stream
# already, one from where the old mapping stopped, by the position map (positions.rs
# `PositionMap::shard_positions`, a Query through table.rs `query_pk`) and the new stream's
# shards.
COMMIT = FLIP + [
    step("lambda.rs::Mappings::list"),
    step("table.rs::query_pk"),
    step("positions.rs::stream_shards"),
    step("lambda.rs::Mappings::create"),
]
# The capacity guard and `fanoutctl capacity` (src/aws/capacity.rs): the newest window of every
# source shard, and the target's round trip, shard count and record limit through the writer
# role. (Reading the target's traffic too is optional: without reverse_replication it is
# denied, noted, and the source alone decides.)
CAPACITY = [
    step("target.rs::KinesisTarget::new", ASSUME_WRITER),
    step("verifications.rs::assumed_role_config", ASSUME_WRITER),
    step("target.rs::KinesisTarget::target_info", WRITER),
    step("target.rs::list_open_shards", WRITER),
    step("capacity.rs::open_shard_count", WRITER),
    step("target.rs::list_open_shards"),
    step("source.rs::KinesisSource::shard_iterator"),
    step("source.rs::KinesisSource::get_records"),
]

RUNBOOK_COMMANDS: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {
    "start": CONTEXT
    + [
        step("control.rs::AwsControl::load"),
        step("table.rs::mode_item"),  # which migration steers each route (mode_owner)
        step("control.rs::AwsControl::write_state"),
        step("control.rs::AwsControl::set_mode"),
        step("routing.rs::S3Routing::publish", on=("routing documents",)),
        step("control.rs::AwsControl::append_history"),
    ],
    "status": CONTEXT
    + LOAD
    + LAG
    + UNACKNOWLEDGED
    + [
        step("routing.rs::S3Routing::fetch", on=("routing documents",)),
        step("table.rs::mode_item"),
        step("lambda.rs::Mappings::get"),
        step("lambda.rs::Mappings::get", OLD_CONSUMERS),
    ],
    "plan": GUARDS + CAPACITY,
    "cutover": FLIP + CAPACITY,
    "rollback": FLIP,
    "commit": COMMIT,
    "pause": CONTEXT
    + LOAD
    + [
        step("control.rs::AwsControl::write_state"),
        step("control.rs::AwsControl::set_mode"),
        step("control.rs::AwsControl::append_history"),
    ],
    "history": CONTEXT + LOAD + [step("control.rs::AwsControl::query")],
    "dlq ack": CONTEXT
    + LOAD
    + UNACKNOWLEDGED
    + [
        step("control.rs::AwsControl::acknowledge"),
        step("control.rs::AwsControl::append_history"),
    ],
    # src/bin/fanoutctl/verify.rs: the route's dead letters, both streams over the window (the
    # old one through --target-role-arn), the result stored for the verification guard.
    "verify": [
        step("verifications.rs::caller_identity"),
        step("dead_letters.rs::S3DeadLetters::list_prefix", on=("dead letters",)),
        step("dead_letters.rs::S3DeadLetters::get_bytes", on=("dead letters",)),
        step("source.rs::KinesisSource::list_shards"),
        step("source.rs::KinesisSource::shard_iterator"),
        step("source.rs::KinesisSource::get_records"),
        step("verifications.rs::assumed_role_config", ASSUME_READER),
        step("source.rs::KinesisSource::list_shards", READER),
        step("source.rs::KinesisSource::shard_iterator", READER),
        step("source.rs::KinesisSource::get_records", READER),
        step("verifications.rs::store"),
    ],
    # src/bin/fanoutctl/redrive.rs and src/redrive/: list, read, replay through the writer, then
    # delete (or mark, --keep) each dead letter; with --on-failure, read each discarded batch,
    # store its records as dead letters and delete it. The source's shards give lineage order.
    "redrive": [
        step("target.rs::KinesisTarget::new", ASSUME_WRITER),
        step("target.rs::KinesisTarget::target_info", WRITER),
        step("target.rs::list_open_shards", WRITER),
        step("target.rs::KinesisTarget::put_records", WRITER),
        step("dead_letters.rs::S3DeadLetters::list_prefix", on=("dead letters", "discarded batches")),
        step("dead_letters.rs::S3DeadLetters::get_bytes", on=("dead letters", "discarded batches")),
        step("dead_letters.rs::S3DeadLetters::delete", on=("dead letters", "discarded batches")),
        step("dead_letters.rs::S3DeadLetters::put_json", on=("dead letters",)),
        step("dead_letters.rs::S3DeadLetters::store", on=("dead letters",)),
        step("source.rs::KinesisSource::list_shards"),
    ],
    "capacity": CAPACITY,
}
RUNBOOK_COMMANDS["resume"] = RUNBOOK_COMMANDS["pause"]
# src/bin/fanoutctl/positions.rs: the migration, the position map in the state table, the
# shards of both streams (the old one through the read role, or the writer role without one).
POSITIONS = LOAD + [
    step("verifications.rs::assumed_role_config", ASSUME_READER),
    step("verifications.rs::assumed_role_config", ASSUME_WRITER),
    step("table.rs::query_pk"),  # PositionMap: checkpoints and pairs
    step("positions.rs::stream_shards"),
    step("positions.rs::stream_shards", READER),
]
RUNBOOK_COMMANDS["positions"] = POSITIONS
# src/bin/fanoutctl/consumers.rs: a translation, and the destination's creation time (part of a
# multi-stream lease key). The lease table itself is the application's (NOT_DEPLOYED), reached
# through the application's role (--kcl-role-arn), which the on-call role may assume.
# ...and `consumers add`: the state item, the mapping found and set, the history (where
# `consumers move` records a move too).
RUNBOOK_COMMANDS["consumers"] = POSITIONS + [
    step("positions.rs::stream_created_s"),
    step("positions.rs::stream_created_s", READER),
    step("verifications.rs::caller_identity"),
    step("control.rs::AwsControl::write_state"),
    step("control.rs::AwsControl::append_history"),
    step("lambda.rs::Mappings::list"),
    step("lambda.rs::Mappings::get"),
    step("lambda.rs::Mappings::enable"),
    # a consumer of an old stream: its mapping in the old account, through the consumers role
    step("verifications.rs::assumed_role_config", ASSUME_OLD_CONSUMERS),
    step("lambda.rs::Mappings::list", OLD_CONSUMERS),
    step("lambda.rs::Mappings::get", OLD_CONSUMERS),
    step("lambda.rs::Mappings::enable", OLD_CONSUMERS),
    # `consumers move --kcl-role-arn`: the application's role, for its lease table
    step("verifications.rs::assumed_role_config", ASSUME_KCL),
]
# Commands docs/runbook.md names that the on-call role is not meant to run.
RUNBOOK_OUTSIDE = {
    "replicate": "stands in for the replicator (checkpoints, leases): the replicator's or an administrator's credentials",
    "backfill": "stands in for the replicator (checkpoints, leases): the replicator's or an administrator's credentials",
}
# Beyond fanoutctl: the on-call role calls the controller through its function URL (the only
# way the function knows who approves a flip) and directly; a function URL needs both actions.
ONCALL_INVOKES = ["lambda:InvokeFunction", "lambda:InvokeFunctionUrl"]


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
# Lambda actions that change an event source mapping.
MAPPING_WRITES = {"lambda:CreateEventSourceMapping", "lambda:UpdateEventSourceMapping", "lambda:DeleteEventSourceMapping"}


def granted_actions(module: str, docs: list[dict], only: set[str] | None = None) -> set[str]:
    """What the module's policy documents grant (only those named in `only`, if given)."""
    local_values = locals_of(docs)
    granted: set[str] = set()
    for name, st in statements(docs):
        if only is not None and name not in only:
            continue
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
        # Mappings are named by UUID only (CreateEventSourceMapping has no resource at all):
        # what limits these to fanout's consumers is the function they invoke.
        switching = sorted(set(actions) & MAPPING_WRITES)
        if switching:
            blocks = list(st.get("condition", []))
            for dyn in st.get("dynamic", []):
                blocks += dyn.get("condition", {}).get("content", [])
            if not any(one_string(c.get("variable", "")) == "lambda:FunctionArn" for c in blocks):
                problem(f"modules/{module} {name}/{sid}: {', '.join(switching)} without a lambda:FunctionArn condition would reach every function's mappings; narrow it to the consumers' functions")
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


def check_iam(parsed: dict[Path, dict], actions: dict[str, set[str]]) -> None:
    runbook = {fn for steps in RUNBOOK_COMMANDS.values() for fn, _, _ in steps}
    listed = {f for ident in IDENTITIES.values() for f in ident["functions"]} | set(NOT_DEPLOYED) | runbook
    for fn in sorted(runbook & set(NOT_DEPLOYED)):
        problem(f"scripts/terraform_check.py: {fn} is in RUNBOOK_COMMANDS (the on-call role runs it) and in NOT_DEPLOYED: remove it from NOT_DEPLOYED")
    for fn in sorted(set(actions) - listed):
        problem(
            f"{fn} calls {', '.join(sorted(actions[fn]))}: add it to IDENTITIES (the role that runs it), "
            "RUNBOOK_COMMANDS (the on-call commands that run it) or NOT_DEPLOYED in "
            "scripts/terraform_check.py, and grant it in that module"
        )
    for fn in sorted(listed - set(actions)):
        problem(f"scripts/terraform_check.py lists {fn}, which calls no AWS operation (renamed or removed?)")
    for ident, spec in IDENTITIES.items():
        module = spec["module"]
        docs = module_docs(parsed, module)
        if not docs:
            problem(f"terraform/modules/{module} is missing")
            continue
        # A Lambda's own role (or the role `role` names): only the documents attached to it
        # (the controller module's on-call role has documents of its own).
        role = spec.get("role", "this")
        own = set(documents_of_role(parsed, module, role)) if "locals" not in spec else None
        granted = granted_actions(module, docs, own)
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
            problem(f"modules/{module}: {ident} calls {a} ({', '.join(users)}) but no policy attached to its role (aws_iam_role.{role}) grants it")
        print(f"iam          {ident:<11} {len(needed)} actions called by the code, all granted: {sorted(needed)}"
              if not (needed - granted) else f"iam          {ident:<11} missing {sorted(needed - granted)}")
    modules = (TF / "modules").iterdir() if (TF / "modules").is_dir() else []
    for module in sorted(p.name for p in modules if p.is_dir()):
        granted_actions(module, module_docs(parsed, module))  # wildcard checks everywhere


# --- The on-call role ---------------------------------------------------------------------------

MODES = ("role", "resource_policy")
# Parts of a document's `count` or a dynamic statement's `for_each` that decide, per access mode
# (writer-access's access_mode; the controller's writer_role_arn set or null), whether it
# exists. Any other condition (an optional KMS key, ...) is taken as met.
GATES = {
    "role": {
        "var.writer_role_arn != null": True,
        "var.writer_role_arn == null": False,
        "var.reader_role_arn != null": True,
        "local.role_mode": True,
        "local.resource_policy_mode": False,
    },
    "resource_policy": {
        "var.writer_role_arn != null": False,
        "var.writer_role_arn == null": True,
        "var.reader_role_arn != null": False,
        "local.role_mode": False,
        "local.resource_policy_mode": True,
    },
}
MODE_NAMES = {"role": "role mode", "resource_policy": "resource-policy mode"}


def gate_open(gate: str, mode: str) -> bool:
    gate = gate.replace("None", "null")  # the parser writes HCL's null as None
    return all(value or key not in gate for key, value in GATES[mode].items())


def flat_strings(value) -> list[str]:
    """Every string in a parsed value (lists and blocks searched through)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in flat_strings(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() if not k.startswith("__") for s in flat_strings(v)]
    return []


def one_string(value) -> str:
    strings = flat_strings(value)
    return strings[0] if len(strings) == 1 else ""


def substitute_locals(text: str, local_values: dict) -> str:
    """`${local.x}` replaced by x's value where that is a plain string (a key prefix)."""
    return re.sub(
        r"\$\{local\.(\w+)\}",
        lambda m: one_string(local_values.get(m.group(1))) or m.group(0),
        text,
    )


class Statement:
    """One Allow statement of an aws_iam_policy_document: what it grants, on what, when."""

    def __init__(self, doc: str, body: dict, gate: str, local_values: dict, path: Path, line):
        self.doc = doc
        self.sid = str(unwrap(body.get("sid", "(no sid)"))).strip("[]'\"")
        self.effect = str(unwrap(body.get("effect", "Allow"))).strip("[]'\" ")
        self.actions = set(resolve_list(body.get("actions", []), local_values))
        raw = flat_strings(body.get("resources", []))
        self.raw_resources = " ".join(raw)
        self.resources = [substitute_locals(r, local_values) for r in resolve_list(body.get("resources", []), local_values)]
        self.principals = " ".join(flat_strings(body.get("principals", [])))
        self.conditions: list[tuple[str, str, list[str]]] = []
        blocks = list(body.get("condition", []))
        for dyn in body.get("dynamic", []):
            blocks += dyn.get("condition", {}).get("content", [])
        for c in blocks:
            self.conditions.append(
                (
                    one_string(c.get("test", "")),
                    one_string(c.get("variable", "")),
                    [substitute_locals(v, local_values) for v in flat_strings(c.get("values", []))],
                )
            )
        self.gate = gate
        self.where = f"data.aws_iam_policy_document.{doc} ({path.relative_to(ROOT)}:{line})"


def policy_statements(parsed: dict[Path, dict], module: str) -> list[Statement]:
    out = []
    local_values = locals_of(module_docs(parsed, module))
    for path, doc in parsed.items():
        if path.parent != TF / "modules" / module:
            continue
        for data in doc.get("data", []):
            for name, body in data.get("aws_iam_policy_document", {}).items():
                doc_gate = " ".join(flat_strings(body.get("count", [])) + flat_strings(body.get("for_each", [])))
                line = body.get("__start_line__", "?")
                for st in body.get("statement", []):
                    out.append(Statement(name, st, doc_gate, local_values, path, line))
                for dyn in body.get("dynamic", []):
                    d = dyn.get("statement", {})
                    gate = doc_gate + " " + " ".join(flat_strings(d.get("for_each", [])))
                    for content in d.get("content", []):
                        out.append(Statement(name, content, gate, local_values, path, line))
    return [s for s in out if s.effect != "Deny"]


def documents_of_role(parsed: dict[Path, dict], module: str, role: str) -> dict[str, str]:
    """The policy documents attached (aws_iam_role_policy) to aws_iam_role.<role>: name → where."""
    out = {}
    for path, doc in parsed.items():
        if path.parent != TF / "modules" / module:
            continue
        for res in doc.get("resource", []):
            for name, body in res.get("aws_iam_role_policy", {}).items():
                if f"aws_iam_role.{role}" not in " ".join(flat_strings(body.get("role", []))):
                    continue
                for policy in flat_strings(body.get("policy", [])):
                    m = re.search(r"data\.aws_iam_policy_document\.(\w+)(?:\[\d+\])?\.json", policy)
                    if m:
                        out[m.group(1)] = f"aws_iam_role_policy.{name} ({path.relative_to(ROOT)}:{body.get('__start_line__', '?')})"
    return out


def resource_hint(action: str, where: str) -> tuple[str, str]:
    """(text a statement's resources must contain, what it is for a person) for `action`."""
    if action.startswith("dynamodb:"):
        return "var.table_arn", "the state table"
    if action.startswith("kinesis:"):
        if where == NEW:
            return "local.source_arns", "the source (new) streams"
        return "local.target_arns", "the target (old) streams"
    if action == "s3:ListBucket":
        return "var.bucket_arn", "the state bucket"
    if action == "lambda:ListEventSourceMappings":
        return "*", "any mapping (ListEventSourceMappings has no resource)"
    if action == "lambda:CreateEventSourceMapping":
        return "*", "any resource, narrowed by lambda:FunctionArn to the moved consumers' functions (CreateEventSourceMapping has no resource type)"
    if action.endswith("EventSourceMapping"):
        return "local.consumer_mappings", "the consumers' event source mappings"
    if action.startswith("lambda:"):
        return "aws_lambda_function.this.arn", "the controller function"
    if action == "sts:AssumeRole":
        if where == ASSUME_OLD_CONSUMERS:
            return "var.old_consumers_role_arn", "the old account's consumers role"
        if where == ASSUME_KCL:
            return "var.kcl_role_arns", "the KCL applications' roles"
        return ("var.reader_role_arn", "the read role") if where == ASSUME_READER else ("var.writer_role_arn", "the writer role")
    return "", "any resource"


def covers(st: Statement, action: str, hint: str, location: str | None) -> bool:
    if action not in st.actions or hint not in st.raw_resources:
        return False
    if location is None:
        return True
    pattern = LOCATIONS[location]
    if action in S3_OBJECT_ACTIONS:
        return any(r.startswith("${var.bucket_arn}/") and r.endswith("/" + pattern) for r in st.resources)
    if action == "s3:ListBucket":
        prefixes = [v for test, var, values in st.conditions if var == "s3:prefix" for v in values]
        return not prefixes or pattern in prefixes
    return True


def check_oncall(parsed: dict[Path, dict], actions: dict[str, set[str]]) -> None:
    """Every runbook command, under the on-call role, with the grants Terraform gives it in both
    accounts, in both access modes."""
    controller = "terraform/modules/controller/main.tf"
    oncall_docs = documents_of_role(parsed, "controller", "oncall")
    if not oncall_docs:
        problem(f"{controller}: no aws_iam_role_policy attaches a policy document to aws_iam_role.oncall")
        return
    oncall = [s for s in policy_statements(parsed, "controller") if s.doc in oncall_docs]
    access = policy_statements(parsed, "writer-access")
    writer_locals = locals_of(module_docs(parsed, "writer-access"))
    writer_actions = set(resolve_list(writer_locals.get("writer_actions", []), {}))
    reverse_actions = writer_actions | set(resolve_list(writer_locals.get("reverse_read_actions", []), {}))
    reader_docs = documents_of_role(parsed, "writer-access", "reader")
    consumers_docs = documents_of_role(parsed, "writer-access", "consumers")
    migrate = next((s.where for s in oncall if s.doc == "migrate"), f"data.aws_iam_policy_document.migrate ({controller})")
    migrate = migrate.replace("data.aws_iam_policy_document.migrate", "data.aws_iam_policy_document.migrate, shared with the controller's role")
    operate = next((s.where for s in oncall if s.doc == "operate"), f"data.aws_iam_policy_document.operate ({controller})")
    operate = operate.replace("data.aws_iam_policy_document.operate", "data.aws_iam_policy_document.operate, the on-call role's own document")
    wa = "terraform/modules/writer-access/main.tf"

    missing: dict[str, list[str]] = {}  # the fix → the commands that need it

    def need(command: str, what: str, fix: str) -> None:
        missing.setdefault(f"{what}: {fix}", []).append(command)

    def label_of(action: str, hint_label: str, location: str | None) -> str:
        if location is None:
            return f"{action} on {hint_label}"
        if action == "s3:ListBucket":
            return f"{action} on the state bucket with s3:prefix {LOCATIONS[location]} (the {location})"
        return f"{action} on the {location} (<bucket>/{LOCATIONS[location]})"

    for command, steps in RUNBOOK_COMMANDS.items():
        for fn, where, on in steps:
            for action in sorted(actions.get(fn, set()) - NEEDS_NO_GRANT):
                if action in S3_OBJECT_ACTIONS | {"s3:ListBucket"} and not on:
                    problem(f"scripts/terraform_check.py: RUNBOOK_COMMANDS[{command!r}] runs {fn} ({action}) without saying on which objects (on=...)")
                    continue
                for mode in MODES:
                    in_mode = f" ({MODE_NAMES[mode]})"
                    own = [s for s in oncall if gate_open(s.gate, mode)]
                    if where in (ASSUME_WRITER, ASSUME_READER):
                        if mode != "role":
                            continue  # nothing to assume without a writer role
                        hint, label = resource_hint(action, where)
                        if not any(covers(s, action, hint, None) for s in own):
                            need(command, f"{action} on {label} ({fn}){in_mode}", f"no statement of the on-call role's policies grants it; add one on {hint} to {operate}")
                        continue
                    if where == ASSUME_OLD_CONSUMERS:
                        # Both modes: event source mappings have no resource policy.
                        hint, label = resource_hint(action, where)
                        if not any(covers(s, action, hint, None) for s in own):
                            need(command, f"{action} on {label} ({fn}){in_mode}", f"no statement of the on-call role's policies grants it; add one on {hint} to {migrate}")
                        continue
                    if where == ASSUME_KCL:
                        # Both modes: the application's role, wherever its lease table is; only
                        # people move a KCL application, so the on-call role's own document.
                        hint, label = resource_hint(action, where)
                        if not any(covers(s, action, hint, None) for s in own):
                            need(command, f"{action} on {label} ({fn}){in_mode}", f"no statement of the on-call role's policies grants it; add one on {hint} to {operate}")
                        continue
                    if where == OLD_CONSUMERS:
                        # The old account's mappings, through writer-access's consumers role, in both modes.
                        hint, label = resource_hint(action, where)
                        granted_by = [s for s in access if s.doc in consumers_docs and gate_open(s.gate, mode)]
                        if not any(covers(s, action, hint, None) for s in granted_by):
                            need(command, f"{action} on {label} in the old account ({fn}){in_mode}", f"not granted by the consumers role's policy, data.aws_iam_policy_document.consumers: add a statement on {hint} ({wa})")
                        continue
                    if where == NEW or mode == "resource_policy":
                        # The on-call role's own policies (in resource-policy mode also for the old streams).
                        hint, label = resource_hint(action, NEW if where == NEW else WRITER)
                        for location in on or (None,):
                            if not any(covers(s, action, hint, location) for s in own):
                                what = label_of(action, label, location)
                                need(command, f"{what} ({fn}){in_mode}", f"no statement of the on-call role's policies grants it; add it to {operate}")
                    if where == NEW:
                        continue
                    # The old account's side: the writer role's or read role's policy, or the streams' policies.
                    if where in (WRITER, WRITER_REVERSE):
                        granted = reverse_actions if where == WRITER_REVERSE else writer_actions
                        if action not in granted:
                            extra = ", and reverse_read_actions with reverse_replication" if where == WRITER_REVERSE else ""
                            need(command, f"{action} on the old streams as the writer ({fn}){in_mode}", f"the writer-access module does not grant it: add it to local.writer_actions{extra} ({wa})")
                    elif where == READER:
                        if mode == "role":
                            granted_by = [s for s in access if s.doc in reader_docs and gate_open(s.gate, mode)]
                            home = "the read role's policy, data.aws_iam_policy_document.read"
                        else:
                            granted_by = [s for s in access if "reader_trusted_role_arns" in s.principals and gate_open(s.gate, mode)]
                            home = "the streams' policy statement for reader_trusted_role_arns, data.aws_iam_policy_document.stream"
                        if not any(action in s.actions for s in granted_by):
                            need(command, f"{action} on the old streams as a reader ({fn}){in_mode}", f"not granted by {home}: add it to local.reader_actions ({wa})")
    for action in ONCALL_INVOKES:
        hint, label = resource_hint(action, NEW)
        if not any(covers(s, action, hint, None) for s in oncall):
            need("invoking the controller through its function URL", f"{action} on {label}", f"no statement of the on-call role's policies grants it; add it to {operate}")

    # The example must put the on-call role where writer-access trusts it.
    example = TF / "examples" / "two-account" / "main.tf"
    calls = {}
    for module_block in parsed.get(example, {}).get("module", []):
        calls.update(module_block)
    wa_call, ctl_call = calls.get("writer_access", {}), calls.get("controller", {})
    if "module.controller.oncall_role_arn" not in " ".join(flat_strings(wa_call.get("trusted_role_arns", []))):
        need("every command through the writer role", "the on-call role in writer-access's trusted_role_arns", f"it is not there: add module.controller.oncall_role_arn to module.writer_access's trusted_role_arns ({example.relative_to(ROOT)})")
    if "module.controller.oncall_role_arn" not in " ".join(flat_strings(wa_call.get("reader_trusted_role_arns", []))):
        need("verify", "the on-call role in writer-access's reader_trusted_role_arns", f"it is not there: add module.controller.oncall_role_arn to module.writer_access's reader_trusted_role_arns ({example.relative_to(ROOT)})")
    if not [v for v in flat_strings(ctl_call.get("reader_role_arn", [])) if v != "null"]:
        need("verify", "the read role's ARN in the controller module (reader_role_arn)", f"it is not given: pass it to module.controller ({example.relative_to(ROOT)}), as local.reader_role_arn")
    # Lambda consumers of the old streams: the flips (the controller's role and the on-call
    # role alike) switch their mappings through writer-access's consumers role.
    consumers_trusted = " ".join(flat_strings(wa_call.get("consumers_trusted_role_arns", [])))
    for who, ref in (("the on-call role", "module.controller.oncall_role_arn"), ("the controller's role", "module.controller.role_arn")):
        if ref not in consumers_trusted:
            need("the flips and `consumers add` for consumers of the old streams", f"{who} in writer-access's consumers_trusted_role_arns", f"it is not there: add {ref} to module.writer_access's consumers_trusted_role_arns ({example.relative_to(ROOT)})")
    if not [v for v in flat_strings(ctl_call.get("old_consumers_role_arn", [])) if v != "null"]:
        need("the flips and `consumers add` for consumers of the old streams", "the consumers role's ARN in the controller module (old_consumers_role_arn)", f"it is not given: pass it to module.controller ({example.relative_to(ROOT)}), as local.old_consumers_role_arn")
    # Only people move a KCL application: the function's role must not assume its role.
    function_docs = documents_of_role(parsed, "controller", "this")
    for st in policy_statements(parsed, "controller"):
        if st.doc in function_docs and covers(st, "sts:AssumeRole", "var.kcl_role_arns", None):
            problem(f"modules/controller data.aws_iam_policy_document.{st.doc}/{st.sid}: the controller's role may assume the KCL applications' roles (var.kcl_role_arns); only the on-call role runs `consumers move`: move the statement to data.aws_iam_policy_document.operate")
    # `consumers move --kcl-role-arn`: the KCL applications' roles, set in the example's tfvars.
    if "var.kcl_role_arns" not in " ".join(flat_strings(ctl_call.get("kcl_role_arns", []))):
        need("consumers", "the KCL applications' roles in the controller module (kcl_role_arns)", f"they are not given: pass var.kcl_role_arns to module.controller ({example.relative_to(ROOT)})")

    for what, commands in missing.items():
        names = ", ".join(f"`fanoutctl {c}`" if c in RUNBOOK_COMMANDS else c for c in dict.fromkeys(commands))
        verb = "needs" if len(set(commands)) == 1 else "need"
        problem(f"on-call role: {names} {verb} {what}")
    total = {a for steps in RUNBOOK_COMMANDS.values() for fn, _, _ in steps for a in actions.get(fn, set())} - NEEDS_NO_GRANT
    if not missing:
        print(
            f"oncall       {len(RUNBOOK_COMMANDS)} runbook commands, {len(total) + len(ONCALL_INVOKES)} actions, "
            f"all granted in role and resource-policy modes: {sorted(total | set(ONCALL_INVOKES))}"
        )
    else:
        print(f"oncall       missing grants: {len(missing)} (below)")


def check_oncall_trust(parsed: dict[Path, dict]) -> None:
    """The two-person rule compares identities; through the on-call role an identity is the
    session name, so its trust policy must make that the caller's own user name."""
    module = TF / "modules" / "controller"
    found = False
    for st in policy_statements(parsed, "controller"):
        if st.doc != "oncall_assume":
            continue
        for test, variable, values in st.conditions:
            if test == "StringEquals" and variable == "sts:RoleSessionName" and values == ["$${aws:username}"]:
                found = True
    if not found:
        problem(
            "modules/controller data.aws_iam_policy_document.oncall_assume: the on-call role's trust policy does not "
            "require sts:RoleSessionName = ${aws:username} (HCL \"$${aws:username}\"), so one person could request and "
            "approve a flip from two sessions: add the condition (behind var.oncall_session_name_is_username)"
        )
    default = None
    for path, doc in parsed.items():
        if path.parent == module:
            for v in doc.get("variable", []):
                if "oncall_session_name_is_username" in v:
                    default = (v["oncall_session_name_is_username"].get("default") or [None])[0]
    if default is not True:
        problem("modules/controller variables.tf: oncall_session_name_is_username must exist and default to true")
    url = False
    for path, doc in parsed.items():
        if path.parent == module:
            for res in doc.get("resource", []):
                for body in res.get("aws_lambda_function_url", {}).values():
                    url = url or one_string(body.get("authorization_type")) == "AWS_IAM"
    if not url:
        problem("modules/controller: no aws_lambda_function_url with authorization_type = \"AWS_IAM\" (two-person approvals through the controller need the caller's identity)")
    print("trust        on-call session name = IAM user name: " + ("required" if found and default is True else "MISSING")
          + "; IAM-authenticated function URL: " + ("yes" if url else "MISSING"))


def check_runbook_listed() -> None:
    """Every `fanoutctl <command>` of docs/runbook.md is either checked for the on-call role or
    named as one it does not run."""
    text = (ROOT / "docs" / "runbook.md").read_text()
    for m in sorted(set(re.findall(r"fanoutctl (dlq ack|[a-z]+)", text))):
        if m not in RUNBOOK_COMMANDS and m not in RUNBOOK_OUTSIDE:
            problem(f"docs/runbook.md runs `fanoutctl {m}`: add it to RUNBOOK_COMMANDS in scripts/terraform_check.py (the adapter functions it runs) or to RUNBOOK_OUTSIDE (why the on-call role does not)")


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
    ops = sdk_operations()
    if ops:  # else a problem says why
        actions = adapter_actions(ops)
        check_iam(parsed, actions)
        check_oncall(parsed, actions)
    check_oncall_trust(parsed)
    check_runbook_listed()
    check_skips()
    for p in problems:
        print(f"FAIL: {p}")
    print("terraform checks: " + (f"{len(problems)} problem(s)" if problems else "PASS"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
