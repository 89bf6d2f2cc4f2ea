#![allow(dead_code)]

pub mod deagg;
pub mod fault_proxy;
pub mod stack;

/// Runs the `fanoutctl` binary against `world` with `extra` variables; returns its exit code
/// and stdout (stdout and stderr are echoed for the test log).
pub fn fanoutctl(world: &stack::World, extra: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let out = fanoutctl_command(world, extra, args)
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

/// A listener on loopback that accepts every connection and never answers: an endpoint that
/// hangs. Its connections stay open until the test process ends.
pub fn black_hole() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a black hole");
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    url
}

/// The `fanoutctl` command against `world`, with `extra` variables.
fn fanoutctl_command(
    world: &stack::World,
    extra: &[(&str, &str)],
    args: &[&str],
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fanoutctl"));
    command
        .args(args)
        .envs(world.process_env())
        .envs(extra.iter().copied())
        .env_remove("AWS_PROFILE")
        .env("FANOUT_LOG", "warn");
    command
}

/// `fanoutctl` started against `world` with `extra` variables, its output piped.
pub fn spawn_fanoutctl(
    world: &stack::World,
    extra: &[(&str, &str)],
    args: &[&str],
) -> std::process::Child {
    fanoutctl_command(world, extra, args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fanoutctl")
}

/// Waits for `child` (started by [`spawn_fanoutctl`]); kills it and fails the test if it has
/// not ended within `limit`. Returns the exit code, stdout and stderr.
pub fn finish_within(
    mut child: std::process::Child,
    what: &str,
    limit: std::time::Duration,
) -> (i32, String, String) {
    use std::io::Read;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for fanoutctl") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("fanoutctl {what} did not end within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    eprintln!("$ fanoutctl {what} ({:?})\n{out}{err}", started.elapsed());
    (status.code().unwrap_or(-1), out, err)
}

/// [`fanoutctl`], killed (and the test failed) if it has not ended within `limit`. Returns
/// the exit code, stdout and stderr.
pub fn fanoutctl_within(
    world: &stack::World,
    extra: &[(&str, &str)],
    args: &[&str],
    limit: std::time::Duration,
) -> (i32, String, String) {
    finish_within(spawn_fanoutctl(world, extra, args), &args.join(" "), limit)
}
