#![allow(dead_code)]

pub mod deagg;
pub mod fault_proxy;
pub mod stack;

/// Runs the `fanoutctl` binary against `world` with `extra` variables; returns its exit code
/// and stdout (stdout and stderr are echoed for the test log).
pub fn fanoutctl(world: &stack::World, extra: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fanoutctl"))
        .args(args)
        .envs(world.process_env())
        .envs(extra.iter().copied())
        .env_remove("AWS_PROFILE")
        .env("FANOUT_LOG", "warn")
        .output()
        .expect("run fanoutctl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "$ fanoutctl {}\n{text}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}
