//! The docker deployment, checked without a Docker engine: the compose file
//! and the Dockerfile are read as text (no image is built here:
//! `scripts/compose-real` does that), and what they tell the binaries
//! (commands, flags, environment) is run against the real binaries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use warren_testkit::eventually;
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::endpoints::{http_get, wait_for_status};
use crate::support::process::{binary, listening_port, signal, wait_with_deadline};

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

fn compose() -> Yaml {
    let text = std::fs::read_to_string(repo_file("docker-compose.yml")).unwrap();
    let mut documents = YamlLoader::load_from_str(&text).expect("docker-compose.yml is YAML");
    assert_eq!(documents.len(), 1);
    documents.remove(0)
}

fn text(yaml: &Yaml) -> String {
    match yaml {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn list(yaml: &Yaml) -> Vec<String> {
    yaml.as_vec()
        .unwrap_or_else(|| panic!("expected a list, found {yaml:?}"))
        .iter()
        .map(text)
        .collect()
}

/// The broker password the tests give compose: every character a URL
/// treats specially.
const TEST_PASSWORD: &str = "t3st@pw:w/x%41#?y";

/// A value as compose expands it with only WARREN_BROKER_PASSWORD set (to
/// [`TEST_PASSWORD`]): `${NAME:-default}` gives the default,
/// `${WARREN_BROKER_PASSWORD:?message}` the password.
fn expand_defaults(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let inner = &rest[start + 2..end];
        if let Some((name, _message)) = inner.split_once(":?") {
            assert_eq!(
                name, "WARREN_BROKER_PASSWORD",
                "an unexpected required variable"
            );
            out.push_str(TEST_PASSWORD);
        } else {
            let default = inner.split_once(":-").map_or("", |(_, default)| default);
            out.push_str(default);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A service's environment as written, nothing expanded.
fn raw_environment(service: &Yaml) -> BTreeMap<String, String> {
    service["environment"]
        .as_hash()
        .expect("environment is a map")
        .iter()
        .map(|(k, v)| (text(k), text(v)))
        .collect()
}

/// A service's environment, defaults expanded.
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    service["environment"]
        .as_hash()
        .expect("environment is a map")
        .iter()
        .map(|(k, v)| (text(k), expand_defaults(&text(v))))
        .collect()
}

/// `(source, target)` of a service's volumes.
fn mounts(service: &Yaml) -> Vec<(String, String)> {
    list(&service["volumes"])
        .iter()
        .map(|spec| {
            let mut parts = spec.split(':');
            let source = parts.next().unwrap().to_owned();
            let target = parts.next().expect("source:target").to_owned();
            (source, target)
        })
        .collect()
}

fn help(binary_name: &str, args: &[&str]) -> String {
    let output = Command::new(binary(binary_name))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{binary_name} {args:?} --help failed"
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Every flag and environment variable is one the binary documents.
fn assert_documented(binary_name: &str, help: &str, command: &[String], env: &[&String]) {
    for flag in command.iter().filter(|arg| arg.starts_with("--")) {
        let flag = flag.split('=').next().unwrap();
        assert!(
            help.contains(flag),
            "{binary_name} has no flag {flag}:\n{help}"
        );
    }
    for name in env {
        assert!(
            help.contains(name.as_str()),
            "{binary_name} --help never mentions {name}:\n{help}"
        );
    }
}

fn duration(text: &str) -> Duration {
    warren::parse_duration(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The Dockerfile's instructions, comments dropped and continuations joined.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_file("Dockerfile")).unwrap();
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                let (keyword, rest) = current.split_once(' ').expect("an instruction");
                instructions.push((keyword.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

/// A service of the compose file, which must exist.
fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let service = &compose["services"][name];
    assert!(!service.is_badvalue(), "no {name} service");
    service
}

/// The broker user and password, as compose gives them to the broker.
fn broker_credentials(compose: &Yaml) -> (String, String) {
    let env = environment(service(compose, "rabbitmq"));
    (
        env["RABBITMQ_DEFAULT_USER"].clone(),
        env["RABBITMQ_DEFAULT_PASS"].clone(),
    )
}

/// Whether the compose file declares a top-level volume of this name.
fn declares_volume(compose: &Yaml, name: &str) -> bool {
    compose["volumes"]
        .as_hash()
        .expect("top-level volumes")
        .contains_key(&Yaml::String(name.to_owned()))
}

/// The broker: the official image with the management UI, a health check
/// that passes only once the AMQP listener accepts connections (issue 16:
/// `ping` passed seconds before it), data on a named volume that survives
/// re-creation.
#[test]
fn compose_file_gives_the_broker_a_port_health_check_and_a_data_volume() {
    let compose = compose();
    let broker = service(&compose, "rabbitmq");
    let image = text(&broker["image"]);
    assert!(
        image.starts_with("rabbitmq:") && image.ends_with("-management"),
        "{image}"
    );
    let check = list(&broker["healthcheck"]["test"]);
    assert_eq!(check[0], "CMD");
    assert_eq!(check[1], "rabbitmq-diagnostics");
    assert!(
        check.contains(&"check_port_connectivity".to_owned()),
        "{check:?}"
    );
    assert!(
        !broker["hostname"].is_badvalue(),
        "a fixed hostname keeps the node's data"
    );
    let data = mounts(broker);
    assert!(
        data.iter()
            .any(|(source, target)| declares_volume(&compose, source)
                && target == "/var/lib/rabbitmq"),
        "{data:?}"
    );
}

/// Published on this host's loopback unless the user opts in, on host
/// ports that can move away from a local broker's.
#[test]
fn compose_file_publishes_the_broker_on_loopback_on_movable_ports() {
    let compose = compose();
    let raw_ports = list(&service(&compose, "rabbitmq")["ports"]);
    let ports: Vec<String> = raw_ports.iter().map(|p| expand_defaults(p)).collect();
    for port in ["127.0.0.1:5672:5672", "127.0.0.1:15672:15672"] {
        assert!(ports.contains(&port.to_owned()), "{ports:?}");
    }
    for (raw, variable) in raw_ports
        .iter()
        .zip(["WARREN_AMQP_PORT", "WARREN_MANAGEMENT_PORT"])
    {
        assert!(raw.contains("${WARREN_PUBLISH_IP:-127.0.0.1}:"), "{raw}");
        assert!(raw.contains(&format!("${{{variable}:-")), "{raw}");
    }
}

/// No default administrator password: compose refuses to start without
/// one. The password travels apart from the URL, as it is, so that any
/// character works (issue 16); the URL carries none.
#[test]
fn compose_file_requires_a_broker_password_and_passes_it_apart_from_the_url() {
    let compose = compose();
    let raw_password =
        raw_environment(service(&compose, "rabbitmq"))["RABBITMQ_DEFAULT_PASS"].clone();
    assert!(
        raw_password.starts_with("${WARREN_BROKER_PASSWORD:?"),
        "{raw_password}"
    );
    let (user, password) = broker_credentials(&compose);
    assert_eq!(password, TEST_PASSWORD);
    let expected_url = format!("amqp://{user}@rabbitmq:5672/%2f");
    for name in ["worker", "producer"] {
        let env = environment(service(&compose, name));
        assert_eq!(env["AMQP_URL"], expected_url, "the {name}'s broker URL");
        assert_eq!(env["AMQP_PASSWORD"], password, "the {name}'s password");
    }
}

/// One image, built here by whichever service is built (issue 16: with two
/// images, `up --build` left the producer's stale).
#[test]
fn compose_file_builds_one_image_for_workers_and_producer() {
    let compose = compose();
    let (worker, producer) = (service(&compose, "worker"), service(&compose, "producer"));
    for service in [worker, producer] {
        assert_eq!(text(&service["build"]), ".");
    }
    assert_eq!(
        text(&producer["image"]),
        text(&worker["image"]),
        "one image for both"
    );
}

/// Workers: scalable (no fixed name, no host port), as many as
/// WARREN_WORKERS says, started once the broker is healthy, given time to
/// drain on stop, their metrics port exposed, with flags and environment
/// the worker binary documents.
#[test]
fn compose_file_runs_scalable_workers_that_drain_on_stop() {
    let compose = compose();
    let worker = service(&compose, "worker");
    assert!(worker["container_name"].is_badvalue() && worker["ports"].is_badvalue());
    let replicas = text(&worker["deploy"]["replicas"]);
    assert!(replicas.contains("${WARREN_WORKERS:-"), "{replicas}");
    assert!(expand_defaults(&replicas).parse::<u32>().unwrap() >= 1);
    assert_eq!(
        text(&worker["depends_on"]["rabbitmq"]["condition"]),
        "service_healthy"
    );
    assert!(!worker["restart"].is_badvalue());
    let env = environment(worker);
    assert!(
        duration(&text(&worker["stop_grace_period"])) > duration(&env["WARREN_SHUTDOWN_TIMEOUT"]),
        "stop_grace_period must leave time for the graceful shutdown"
    );
    let metrics_port = env["WARREN_METRICS_ADDR"].rsplit(':').next().unwrap();
    assert_eq!(list(&worker["expose"]), [metrics_port]);
    let command = list(&worker["command"]);
    assert_eq!(command[0], "worker");
    let env_names: Vec<&String> = env.keys().collect();
    assert_documented("worker", &help("worker", &[]), &command[1..], &env_names);
}

/// Workers write shared downloads where the producer reads them, and sums
/// by reference (`sum FILE --shared`) name paths in the directory the
/// workers read.
#[test]
fn compose_file_mounts_the_workers_shared_dir_in_the_producer_too() {
    let compose = compose();
    let (worker, producer) = (service(&compose, "worker"), service(&compose, "producer"));
    let shared = &environment(worker)["WARREN_SHARED_DIR"];
    let worker_mounts = mounts(worker);
    let (volume, _) = worker_mounts
        .iter()
        .find(|(_, target)| target == shared)
        .expect("WARREN_SHARED_DIR is a mounted volume");
    assert!(declares_volume(&compose, volume));
    assert!(
        mounts(producer).contains(&(volume.clone(), shared.clone())),
        "the producer mounts the same downloads volume at the same path"
    );
    assert_eq!(
        &environment(producer)["WARREN_SHARED_DIR"],
        shared,
        "the producer's shared directory is the workers'"
    );
}

/// The producer runs on demand, under a profile, once the broker is
/// healthy, on inputs from the compose file's folder, read-only, with
/// environment the producer binary documents.
#[test]
fn compose_file_runs_the_producer_on_demand_on_read_only_inputs() {
    let compose = compose();
    let producer = service(&compose, "producer");
    assert_eq!(list(&producer["entrypoint"]), ["producer"]);
    assert!(!list(&producer["profiles"]).is_empty());
    assert_eq!(
        text(&producer["depends_on"]["rabbitmq"]["condition"]),
        "service_healthy"
    );
    assert!(
        list(&producer["volumes"]).contains(&"./:/data:ro".to_owned()),
        "{:?}",
        list(&producer["volumes"])
    );
    assert_eq!(text(&producer["working_dir"]), "/data");
    let env = environment(producer);
    let env_names: Vec<&String> = env.keys().collect();
    assert_documented("producer", &help("producer", &["sum"]), &[], &env_names);
}

/// Runs a binary with a service's environment (and nothing else of the
/// test's), as the container would.
fn with_service_env(binary_name: &str, env: &BTreeMap<String, String>) -> Command {
    let mut command = Command::new(binary(binary_name));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        // There is no `rabbitmq` host here: fail fast instead of after 10 s.
        .env("WARREN_CONNECT_TIMEOUT", "2s")
        .stdin(Stdio::null());
    command
}

/// `docker compose run --rm producer sum --random 100000000`, as the
/// README says: the arguments parse, the URL and password come from the
/// compose environment, and only the broker is missing: the producer waits
/// for it (here for 1 s, not the default minute), then gives up.
#[test]
fn the_compose_producer_command_waits_for_the_broker_without_showing_the_password() {
    let env = environment(service(&compose(), "producer"));
    let output = with_service_env("producer", &env)
        .env("WARREN_BROKER_WAIT", "1s")
        .args(["sum", "--random", "100000000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("waiting for the broker at amqp://warren:***@rabbitmq:5672/%2f"),
        "{stderr}"
    );
    assert!(
        stderr.contains("cannot connect to the broker at amqp://warren:***@rabbitmq:5672/%2f"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(TEST_PASSWORD),
        "the password leaked: {stderr}"
    );
}

/// The worker's command with its environment: it starts, serves its
/// endpoints (alive, not ready: there is no broker), waits for the broker,
/// says so without the password, and stops cleanly on SIGTERM.
#[test]
fn the_compose_worker_command_serves_health_waits_for_the_broker_and_stops_on_sigterm() {
    let compose = compose();
    let dir = tempfile::tempdir().unwrap();
    let mut env = environment(service(&compose, "worker"));
    // Port 0: the system picks a free port, read back from /proc.
    env.insert("WARREN_METRICS_ADDR".into(), "127.0.0.1:0".into());
    env.insert(
        "WARREN_SHARED_DIR".into(),
        dir.path().to_str().unwrap().into(),
    );
    let command = list(&service(&compose, "worker")["command"]);
    let log = dir.path().join("worker.log");
    let mut child = with_service_env(&command[0], &env)
        .args(&command[1..])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let port = listening_port(&child, "the worker");
    wait_for_status(port, "/readyz", 503);
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    // What it says while it waits is part of the behaviour checked here.
    let waiting = "waiting for the broker at amqp://warren:***@rabbitmq:5672/%2f";
    eventually(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(waiting) {
            Ok(())
        } else {
            Err(format!("the worker never said {waiting:?}:\n{text}"))
        }
    });
    signal(&child, Signal::SIGTERM);
    let status = wait_with_deadline(&mut child, Duration::from_secs(20), "the worker");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{log}");
    assert!(!log.contains(TEST_PASSWORD), "the password leaked: {log}");
    // Logs that go to a file carry no colour codes (issue 16).
    assert!(!log.contains('\u{1b}'), "escape codes in a log file: {log}");
}

/// The `FROM` lines' arguments: the build stages in order.
fn stages(instructions: &[(String, String)]) -> Vec<&String> {
    arguments_of(instructions, "FROM")
}

/// The arguments of every instruction with this keyword, in order.
fn arguments_of<'a>(instructions: &'a [(String, String)], keyword: &str) -> Vec<&'a String> {
    instructions
        .iter()
        .filter(|(k, _)| k == keyword)
        .map(|(_, rest)| rest)
        .collect()
}

/// A multi-stage build whose build stage's Rust is at least the
/// workspace's rust-version. (Read, not built: there is no Docker engine
/// here; `scripts/compose-real` builds the image.)
#[test]
fn dockerfile_text_builds_in_stages_on_a_new_enough_rust() {
    let instructions = dockerfile();
    let stages = stages(&instructions);
    assert!(stages.len() >= 2, "a multi-stage build: {stages:?}");
    let rust_image = stages[0].split_whitespace().next().unwrap();
    let rust_version = rust_image
        .strip_prefix("rust:")
        .and_then(|tag| tag.split('-').next())
        .expect("the build stage uses the official rust image");
    let manifest = std::fs::read_to_string(repo_file("Cargo.toml")).unwrap();
    let required = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    let version = |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().unwrap()).collect() };
    assert!(
        version(rust_version) >= version(required),
        "{rust_version} < {required}"
    );
}

/// The runtime stage is slim, gets both binaries, stripped (they were 84
/// and 72 MB with symbols), and runs the worker by default.
#[test]
fn dockerfile_text_copies_both_stripped_binaries_into_a_slim_stage_running_the_worker() {
    let instructions = dockerfile();
    let runtime = stages(&instructions).pop().unwrap();
    assert!(
        runtime.contains("slim") || runtime.contains("distroless"),
        "{runtime}"
    );
    let copied: Vec<&String> = arguments_of(&instructions, "COPY")
        .into_iter()
        .filter(|rest| rest.starts_with("--from="))
        .collect();
    for name in ["producer", "worker"] {
        assert!(
            copied
                .iter()
                .any(|c| c.contains(&format!("target/release/{name}"))),
            "the image lacks {name}: {copied:?}"
        );
    }
    assert!(
        arguments_of(&instructions, "ENV")
            .iter()
            .any(|rest| rest.contains("CARGO_PROFILE_RELEASE_STRIP=symbols")),
        "the release build strips its binaries"
    );
    let cmd = arguments_of(&instructions, "CMD").pop().expect("a CMD");
    assert_eq!(cmd, r#"["worker"]"#);
}

/// It runs as a numeric, non-root user and group, which exist, and the
/// downloads directory the compose file mounts belongs to them.
#[test]
fn dockerfile_text_sets_a_numeric_non_root_user_owning_the_downloads_dir() {
    let instructions = dockerfile();
    let user = arguments_of(&instructions, "USER")
        .pop()
        .expect("a USER instruction");
    let (uid, gid) = user.split_once(':').expect("USER uid:gid");
    let (uid, gid): (u32, u32) = (
        uid.parse().expect("a numeric user"),
        gid.parse().expect("a numeric group"),
    );
    assert_ne!(uid, 0);
    let runs = arguments_of(&instructions, "RUN");
    let run_has = |text: &str| runs.iter().any(|run| run.contains(text));
    assert!(run_has(&format!("groupadd --gid {gid} ")), "{runs:?}");
    assert!(
        run_has(&format!("useradd --uid {uid} --gid {gid} ")),
        "{runs:?}"
    );
    let shared = environment(service(&compose(), "worker"))["WARREN_SHARED_DIR"].clone();
    assert!(
        run_has(&format!("chown {uid}:{gid} {shared}")),
        "{shared} must belong to user {uid}"
    );
}

/// Dependencies build before any source is copied: editing a source, or
/// any file outside the allow-list, leaves that layer cached.
#[test]
fn dockerfile_text_builds_dependencies_before_copying_any_source() {
    let instructions = dockerfile();
    let position = |found: &dyn Fn(&(String, String)) -> bool| {
        instructions
            .iter()
            .position(found)
            .expect("instruction present")
    };
    let lockfile = position(&|(k, rest)| k == "COPY" && rest.contains("Cargo.lock"));
    let first_build = position(&|(k, rest)| k == "RUN" && rest.contains("cargo build"));
    let first_source = position(&|(k, rest)| k == "COPY" && rest.contains("/src"));
    assert!(
        lockfile < first_build && first_build < first_source,
        "{instructions:?}"
    );
}

/// The context is an allow-list: everything is left out, then the
/// manifests and the crates' sources are let in. Files users keep in this
/// folder (which the compose file mounts for the producer) never enter a
/// layer: issue 16 found the broker password in one. Every file the build
/// copies is let in.
#[test]
fn dockerignore_lets_in_only_the_files_the_dockerfile_copies() {
    let ignore = std::fs::read_to_string(repo_file(".dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert_eq!(patterns.first(), Some(&"*"), "{patterns:?}");
    let allowed: Vec<&str> = patterns[1..]
        .iter()
        .map(|p| p.strip_prefix('!').expect("only exceptions after *"))
        .collect();
    for user_file in [".env", "amqp_url.txt", "urls.txt", "readings.npy", "target"] {
        assert!(!allowed.contains(&user_file), "{user_file} is let in");
    }
    assert!(allowed.iter().all(|p| !p.contains('*')), "{allowed:?}");
    let instructions = dockerfile();
    for rest in arguments_of(&instructions, "COPY") {
        if rest.starts_with("--from=") {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(
                allowed
                    .iter()
                    .any(|a| source == a || source.starts_with(&format!("{a}/"))),
                "COPY {source} is not in the allow-list {allowed:?}"
            );
        }
    }
}
