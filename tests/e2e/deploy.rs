//! The docker deployment, checked without a Docker engine: the compose file
//! and the Dockerfile are parsed, and what they tell the binaries (commands,
//! flags, environment) is run against the real binaries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::process::{binary, signal, wait_with_deadline};

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

/// `${NAME:-default}` as compose expands it with NAME unset.
fn expand_defaults(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let inner = &rest[start + 2..end];
        let default = inner.split_once(":-").map_or("", |(_, default)| default);
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
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

#[test]
fn compose_file_wires_broker_workers_and_producer_together() {
    let compose = compose();
    let services = &compose["services"];
    let broker = &services["rabbitmq"];
    let worker = &services["worker"];
    let producer = &services["producer"];
    for (name, service) in [
        ("rabbitmq", broker),
        ("worker", worker),
        ("producer", producer),
    ] {
        assert!(!service.is_badvalue(), "no {name} service");
    }

    // The broker: the official image with the management UI, a health
    // check that really asks the broker, data on a named volume that
    // survives re-creation.
    let image = text(&broker["image"]);
    assert!(
        image.starts_with("rabbitmq:") && image.ends_with("-management"),
        "{image}"
    );
    let check = list(&broker["healthcheck"]["test"]);
    assert_eq!(check[0], "CMD");
    assert_eq!(check[1], "rabbitmq-diagnostics");
    assert!(check.contains(&"ping".to_owned()), "{check:?}");
    assert!(
        !broker["hostname"].is_badvalue(),
        "a fixed hostname keeps the node's data"
    );
    let volumes = compose["volumes"].as_hash().expect("top-level volumes");
    let declared = |name: &str| volumes.contains_key(&Yaml::String(name.to_owned()));
    let data = mounts(broker);
    assert!(
        data.iter()
            .any(|(source, target)| declared(source) && target == "/var/lib/rabbitmq"),
        "{data:?}"
    );
    let ports = list(&broker["ports"]);
    for port in ["5672:5672", "15672:15672"] {
        assert!(ports.contains(&port.to_owned()), "{ports:?}");
    }
    let broker_env = environment(broker);
    let (user, password) = (
        &broker_env["RABBITMQ_DEFAULT_USER"],
        &broker_env["RABBITMQ_DEFAULT_PASS"],
    );

    // Workers: built here, scalable (no fixed name, no host port), started
    // once the broker is healthy, given time to drain on stop.
    assert_eq!(text(&worker["build"]), ".");
    assert!(worker["container_name"].is_badvalue() && worker["ports"].is_badvalue());
    assert!(worker["deploy"]["replicas"].as_i64().unwrap() >= 1);
    assert_eq!(
        text(&worker["depends_on"]["rabbitmq"]["condition"]),
        "service_healthy"
    );
    assert!(!worker["restart"].is_badvalue());
    let worker_env = environment(worker);
    assert!(
        duration(&text(&worker["stop_grace_period"]))
            > duration(&worker_env["WARREN_SHUTDOWN_TIMEOUT"]),
        "stop_grace_period must leave time for the graceful shutdown"
    );
    let expected_url = format!("amqp://{user}:{password}@rabbitmq:5672/%2f");
    assert_eq!(
        worker_env["AMQP_URL"], expected_url,
        "the worker's broker URL"
    );
    // The metrics port is the one exposed.
    let metrics_port = worker_env["WARREN_METRICS_ADDR"]
        .rsplit(':')
        .next()
        .unwrap();
    assert_eq!(list(&worker["expose"]), [metrics_port]);
    // Workers write shared downloads where the producer reads them.
    let shared = &worker_env["WARREN_SHARED_DIR"];
    let worker_mounts = mounts(worker);
    let (volume, _) = worker_mounts
        .iter()
        .find(|(_, target)| target == shared)
        .expect("WARREN_SHARED_DIR is a mounted volume");
    assert!(declared(volume));
    assert!(
        mounts(producer).contains(&(volume.clone(), shared.clone())),
        "the producer mounts the same downloads volume at the same path"
    );
    let worker_command = list(&worker["command"]);
    assert_eq!(worker_command[0], "worker");
    let worker_env_names: Vec<&String> = worker_env.keys().collect();
    assert_documented(
        "worker",
        &help("worker", &[]),
        &worker_command[1..],
        &worker_env_names,
    );

    // The producer runs on demand, under a profile.
    assert_eq!(list(&producer["entrypoint"]), ["producer"]);
    assert!(!list(&producer["profiles"]).is_empty());
    assert_eq!(
        text(&producer["depends_on"]["rabbitmq"]["condition"]),
        "service_healthy"
    );
    let producer_env = environment(producer);
    assert_eq!(
        producer_env["AMQP_URL"], expected_url,
        "the producer's broker URL"
    );
    let producer_env_names: Vec<&String> = producer_env.keys().collect();
    assert_documented(
        "producer",
        &help("producer", &["sum"]),
        &[],
        &producer_env_names,
    );
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

#[test]
fn compose_commands_run_with_the_compose_environment() {
    let compose = compose();
    let services = &compose["services"];
    let dir = tempfile::tempdir().unwrap();

    // `docker compose run --rm producer sum --random 100000000`, as the
    // README says: the arguments parse, the URL comes from the compose
    // environment, and only the broker is missing.
    let env = environment(&services["producer"]);
    let output = with_service_env("producer", &env)
        .args(["sum", "--random", "100000000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot connect to the broker at amqp://warren:***@rabbitmq:5672/%2f"),
        "{stderr}"
    );

    // The worker's command with its environment: it starts, serves its
    // endpoints, keeps retrying the broker, and stops cleanly on SIGTERM.
    let mut env = environment(&services["worker"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.insert("WARREN_METRICS_ADDR".into(), format!("127.0.0.1:{port}"));
    env.insert(
        "WARREN_SHARED_DIR".into(),
        dir.path().to_str().unwrap().into(),
    );
    let command = list(&services["worker"]["command"]);
    let log = dir.path().join("worker.log");
    let mut child = with_service_env(&command[0], &env)
        .args(&command[1..])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap().contains("retrying") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&child, Signal::SIGTERM);
    let status = wait_with_deadline(&mut child, Duration::from_secs(20), "the worker");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("amqp://warren:***@rabbitmq:5672/%2f"), "{log}");
    assert!(
        !log.contains("warren:warren@"),
        "the password leaked: {log}"
    );
}

#[test]
fn dockerfile_builds_both_binaries_into_a_small_non_root_image() {
    let instructions = dockerfile();
    let stages: Vec<&String> = instructions
        .iter()
        .filter(|(keyword, _)| keyword == "FROM")
        .map(|(_, rest)| rest)
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build: {stages:?}");
    // The build stage's Rust is at least the workspace's rust-version.
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
    // The runtime stage is slim and holds both binaries.
    let runtime = stages.last().unwrap();
    assert!(
        runtime.contains("slim") || runtime.contains("distroless"),
        "{runtime}"
    );
    let copied: Vec<&String> = instructions
        .iter()
        .filter(|(keyword, rest)| keyword == "COPY" && rest.starts_with("--from="))
        .map(|(_, rest)| rest)
        .collect();
    for name in ["producer", "worker"] {
        assert!(
            copied
                .iter()
                .any(|c| c.contains(&format!("target/release/{name}"))),
            "the image lacks {name}: {copied:?}"
        );
    }
    // It runs as a numeric, non-root user, and the downloads directory the
    // compose file mounts belongs to that user.
    let user = &instructions
        .iter()
        .rfind(|(keyword, _)| keyword == "USER")
        .expect("a USER instruction")
        .1;
    let uid: u32 = user.parse().expect("a numeric user");
    assert_ne!(uid, 0);
    let shared = environment(&compose()["services"]["worker"])["WARREN_SHARED_DIR"].clone();
    assert!(
        instructions.iter().any(|(keyword, rest)| keyword == "RUN"
            && rest.contains(&format!("chown {uid}:{uid} {shared}"))),
        "{shared} must belong to user {uid}"
    );
    // The default command is the worker, and the build context leaves out
    // the target directory.
    let cmd = &instructions
        .iter()
        .rfind(|(keyword, _)| keyword == "CMD")
        .unwrap()
        .1;
    assert_eq!(cmd, r#"["worker"]"#);
    let ignore = std::fs::read_to_string(repo_file(".dockerignore")).unwrap();
    assert!(
        ignore
            .lines()
            .any(|line| line.trim_end_matches('/') == "target")
    );
}
