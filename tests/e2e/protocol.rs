use std::time::Duration;

use crate::support::Scenario;
use crate::support::broker::amqp_url;

/// The Python client printed in docs/PROTOCOL.md under `heading`.
fn documented_client(heading: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md"))
        .expect("docs/PROTOCOL.md exists");
    let section = doc
        .split(heading)
        .nth(1)
        .expect("PROTOCOL.md has the Python client section");
    let code = section
        .split("```python")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section holds a python code block");
    code.to_owned()
}

#[test]
fn the_documented_python_client_works_against_a_real_worker() {
    let mut s = Scenario::new("python_client");
    let _worker = s.workers(1);
    let client = documented_client("## A complete Python client")
        .replace(
            "prefix, values, chunk = \"warren\"",
            &format!("prefix, values, chunk = {:?}", s.prefix),
        )
        .replace("amqp://guest:guest@127.0.0.1:5672/%2f", &amqp_url());
    assert!(
        client.contains(&s.prefix),
        "the client's prefix line changed:\n{client}"
    );
    run_client(&mut s, &client);
}

#[test]
fn the_documented_python_by_reference_client_works_against_a_real_worker() {
    let mut s = Scenario::new("python_byref_client");
    let shared = s.path_str("shared");
    std::fs::create_dir(&shared).unwrap();
    let _worker = s.start_worker("w0", &["--shared-dir", &shared]);
    s.broker.wait_for_consumers(1);
    let client = documented_client("## A by-reference job from Python")
        .replace(
            "prefix, shared_dir, name, chunk = \"warren\", \"/data\"",
            &format!(
                "prefix, shared_dir, name, chunk = {:?}, {shared:?}",
                s.prefix
            ),
        )
        .replace("amqp://guest:guest@127.0.0.1:5672/%2f", &amqp_url());
    assert!(
        client.contains(&s.prefix),
        "the client's prefix line changed:\n{client}"
    );
    run_client(&mut s, &client);
}

/// Runs a client that leaves `total` and `values`, and checks the total
/// against `math.fsum`.
fn run_client(s: &mut Scenario, client: &str) {
    let script = format!(
        "{client}\nimport math\nassert float(total) == math.fsum(values), (float(total), math.fsum(values))\nprint('exact')\n"
    );
    std::fs::write(s.path("client.py"), script).unwrap();
    let mut child = std::process::Command::new("python3")
        .arg(s.path("client.py"))
        .stdout(std::fs::File::create(s.path("client.out")).unwrap())
        .stderr(std::fs::File::create(s.path("client.err")).unwrap())
        .spawn()
        .expect("python3 runs");
    let status = crate::support::process::wait_with_deadline(
        &mut child,
        Duration::from_secs(60),
        "the Python client",
    );
    let out = std::fs::read_to_string(s.path("client.out")).unwrap();
    let err = std::fs::read_to_string(s.path("client.err")).unwrap();
    assert!(
        status.success() && out.lines().last() == Some("exact"),
        "the documented client failed ({status}); it needs pika (`pip install pika`)\nstdout:\n{out}\nstderr:\n{err}"
    );
    s.assert_clean();
}
