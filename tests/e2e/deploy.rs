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
    // check that passes only once the AMQP listener accepts connections
    // (issue 16: `ping` passed seconds before it), data on a named volume
    // that survives re-creation.
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
    let volumes = compose["volumes"].as_hash().expect("top-level volumes");
    let declared = |name: &str| volumes.contains_key(&Yaml::String(name.to_owned()));
    let data = mounts(broker);
    assert!(
        data.iter()
            .any(|(source, target)| declared(source) && target == "/var/lib/rabbitmq"),
        "{data:?}"
    );
    // Published on this host's loopback unless the user opts in, on host
    // ports that can move away from a local broker's.
    let ports: Vec<String> = list(&broker["ports"])
        .iter()
        .map(|p| expand_defaults(p))
        .collect();
    for port in ["127.0.0.1:5672:5672", "127.0.0.1:15672:15672"] {
        assert!(ports.contains(&port.to_owned()), "{ports:?}");
    }
    for (raw, variable) in list(&broker["ports"])
        .iter()
        .zip(["WARREN_AMQP_PORT", "WARREN_MANAGEMENT_PORT"])
    {
        assert!(raw.contains("${WARREN_PUBLISH_IP:-127.0.0.1}:"), "{raw}");
        assert!(raw.contains(&format!("${{{variable}:-")), "{raw}");
    }
    // No default administrator password: compose refuses to start without
    // one.
    let raw_password = raw_environment(broker)["RABBITMQ_DEFAULT_PASS"].clone();
    assert!(
        raw_password.starts_with("${WARREN_BROKER_PASSWORD:?"),
        "{raw_password}"
    );
    let broker_env = environment(broker);
    let (user, password) = (
        &broker_env["RABBITMQ_DEFAULT_USER"],
        &broker_env["RABBITMQ_DEFAULT_PASS"],
    );
    assert_eq!(password, TEST_PASSWORD);

    // Workers and producer: one image, built here by whichever service is
    // built (issue 16: with two images, `up --build` left the producer's
    // stale).
    for service in [worker, producer] {
        assert_eq!(text(&service["build"]), ".");
    }
    let image = text(&worker["image"]);
    assert_eq!(text(&producer["image"]), image, "one image for both");
    // Workers: scalable (no fixed name, no host port), as many as
    // WARREN_WORKERS says, started once the broker is healthy, given time
    // to drain on stop.
    assert!(worker["container_name"].is_badvalue() && worker["ports"].is_badvalue());
    let replicas = text(&worker["deploy"]["replicas"]);
    assert!(replicas.contains("${WARREN_WORKERS:-"), "{replicas}");
    assert!(expand_defaults(&replicas).parse::<u32>().unwrap() >= 1);
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
    // The password travels apart from the URL, as it is, so that any
    // character works (issue 16); the URL carries none.
    let expected_url = format!("amqp://{user}@rabbitmq:5672/%2f");
    assert_eq!(
        worker_env["AMQP_URL"], expected_url,
        "the worker's broker URL"
    );
    assert_eq!(&worker_env["AMQP_PASSWORD"], password);
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
    assert_eq!(&producer_env["AMQP_PASSWORD"], password);
    // Sums by reference (`sum FILE --shared`) name paths in the directory
    // the workers read.
    assert_eq!(
        &producer_env["WARREN_SHARED_DIR"], shared,
        "the producer's shared directory is the workers'"
    );
    // Inputs come from the compose file's folder, read-only.
    assert!(
        list(&producer["volumes"]).contains(&"./:/data:ro".to_owned()),
        "{:?}",
        list(&producer["volumes"])
    );
    assert_eq!(text(&producer["working_dir"]), "/data");
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
    // README says: the arguments parse, the URL and password come from the
    // compose environment, and only the broker is missing: the producer
    // waits for it (here for 1 s, not the default minute), then gives up.
    let env = environment(&services["producer"]);
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

    // The worker's command with its environment: it starts, serves its
    // endpoints, waits for the broker, and stops cleanly on SIGTERM.
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
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("waiting for the broker at")
    {
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
    assert!(!log.contains(TEST_PASSWORD), "the password leaked: {log}");
    // Logs that go to a file carry no colour codes (issue 16).
    assert!(!log.contains('\u{1b}'), "escape codes in a log file: {log}");
}

/// Read, not built (no Docker engine here; `scripts/compose-real` builds
/// it): the Dockerfile's text promises a slim non-root image with both
/// binaries, stripped, whose dependencies build in a cached layer of their
/// own, from a context that holds only what the build needs.
#[test]
fn dockerfile_text_describes_a_slim_non_root_stripped_image_with_a_cached_dependency_layer() {
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
    // It runs as a numeric, non-root user and group, which exist, and the
    // downloads directory the compose file mounts belongs to them.
    let user = &instructions
        .iter()
        .rfind(|(keyword, _)| keyword == "USER")
        .expect("a USER instruction")
        .1;
    let (uid, gid) = user.split_once(':').expect("USER uid:gid");
    let (uid, gid): (u32, u32) = (
        uid.parse().expect("a numeric user"),
        gid.parse().expect("a numeric group"),
    );
    assert_ne!(uid, 0);
    let runs: Vec<&String> = instructions
        .iter()
        .filter(|(keyword, _)| keyword == "RUN")
        .map(|(_, rest)| rest)
        .collect();
    let run_has = |text: &str| runs.iter().any(|run| run.contains(text));
    assert!(run_has(&format!("groupadd --gid {gid} ")), "{runs:?}");
    assert!(
        run_has(&format!("useradd --uid {uid} --gid {gid} ")),
        "{runs:?}"
    );
    let shared = environment(&compose()["services"]["worker"])["WARREN_SHARED_DIR"].clone();
    assert!(
        run_has(&format!("chown {uid}:{gid} {shared}")),
        "{shared} must belong to user {uid}"
    );
    // Stripped binaries (they were 84 and 72 MB with symbols).
    assert!(
        instructions.iter().any(|(keyword, rest)| keyword == "ENV"
            && rest.contains("CARGO_PROFILE_RELEASE_STRIP=symbols")),
        "the release build strips its binaries"
    );
    // Dependencies build before any source is copied: editing a source, or
    // any file outside the allow-list, leaves that layer cached.
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
    // The default command is the worker.
    let cmd = &instructions
        .iter()
        .rfind(|(keyword, _)| keyword == "CMD")
        .unwrap()
        .1;
    assert_eq!(cmd, r#"["worker"]"#);

    // The context is an allow-list: everything is left out, then the
    // manifests and the crates' sources are let in. Files users keep in this
    // folder (which the compose file mounts for the producer) never enter a
    // layer: issue 16 found the broker password in one.
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
    // Every file the build copies is let in.
    for (_, rest) in instructions
        .iter()
        .filter(|(keyword, rest)| keyword == "COPY" && !rest.starts_with("--from="))
    {
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
