//! Connecting securely: `amqps://` with the broker's certificate verified
//! (against a CA the test makes) and client certificates, the broker URL
//! read from a file, and a virtual host per tenant.

use std::process::Command;

use crate::support::python::reference;
use crate::support::tls::{Certificates, ClientAuth, TlsListener};
use crate::support::{Run, Scenario};

/// The run succeeded and printed the sum of numpy's seeded stream.
fn expect_random_sum(run: &Run, count: &str, seed: &str) {
    run.expect_success();
    assert_eq!(
        run.answer(),
        reference(&["numpy-random-sum", count, seed]),
        "{run}"
    );
}

#[test]
fn amqps_verifies_the_broker_certificate_against_the_given_ca() {
    let mut s = Scenario::new("tls");
    let pki = Certificates::generate();
    let listener = TlsListener::start(&pki, ClientAuth::None);
    let ca = pki.file("ca.pem");
    // The host name is checked against the certificate, so use the name it
    // was issued for.
    let url = listener.url("localhost");

    let _worker = s.start_worker("w0", &["--amqp-url", &url, "--tls-ca-file", &ca]);
    s.broker.wait_for_consumers(1);
    let run = s
        .producer(&[
            "sum",
            "--random",
            "200000",
            "--seed",
            "5",
            "--chunk-size",
            "50000",
            "--amqp-url",
            &url,
            "--tls-ca-file",
            &ca,
            "--json",
        ])
        .run();
    run.expect_success();
    assert_eq!(
        run.json()["sum"],
        reference(&["numpy-random-sum", "200000", "5"]).as_str(),
        "{run}"
    );

    // Without the CA the certificate is not trusted: a clear error that
    // names the fix, and no password.
    let run = s
        .producer(&["sum", "--random", "10", "--amqp-url", &url])
        .run();
    run.expect_code(2);
    assert!(run.stderr.contains("amqps://guest:***@localhost"), "{run}");
    assert!(run.stderr.contains("certificate"), "{run}");
    assert!(run.stderr.contains("--tls-ca-file"), "{run}");
    assert!(!run.stderr.contains(":guest@"), "{run}");

    // A certificate issued for another name is refused even with the CA.
    let run = s
        .producer(&[
            "sum",
            "--random",
            "10",
            "--amqp-url",
            &listener.url("127.0.0.1"),
            "--tls-ca-file",
            &ca,
        ])
        .run();
    run.expect_code(2);
    assert!(run.stderr.contains("certificate"), "{run}");

    // TLS files with a plain amqp:// URL are a mistake worth stopping for.
    let run = s
        .producer(&["sum", "--random", "10", "--tls-ca-file", &ca])
        .run();
    run.expect_code(2);
    assert!(run.stderr.contains("not amqps://"), "{run}");
    s.assert_clean();
}

#[test]
fn client_certificates_are_presented_when_the_broker_asks() {
    let mut s = Scenario::new("tls_client");
    let pki = Certificates::generate();
    let listener = TlsListener::start(&pki, ClientAuth::Required);
    let url = listener.url("localhost");
    let ca = pki.file("ca.pem");
    let (cert, key) = (pki.file("client.pem"), pki.file("client.key"));
    let run = s
        .producer(&[
            "sum",
            "--random",
            "1000",
            "--seed",
            "2",
            "--workers",
            "1",
            "--amqp-url",
            &url,
            "--tls-ca-file",
            &ca,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
        ])
        .run();
    expect_random_sum(&run, "1000", "2");

    // Without a client certificate the broker hangs up during the handshake.
    let run = s
        .producer(&[
            "sum",
            "--random",
            "10",
            "--amqp-url",
            &url,
            "--tls-ca-file",
            &ca,
        ])
        .run();
    run.expect_code(2);
    assert!(run.stderr.contains("cannot connect"), "{run}");
    assert!(run.stderr.contains("--tls-cert-file"), "{run}");
    assert_eq!(run.stderr.lines().count(), 2, "one error, one hint: {run}");
    // A key without its certificate is a usage error, found before connecting.
    let run = s
        .producer(&[
            "sum",
            "--random",
            "10",
            "--amqp-url",
            &url,
            "--tls-key-file",
            &key,
        ])
        .run();
    run.expect_code(2);
    assert!(run.stderr.contains("--tls-cert-file"), "{run}");
    s.assert_clean();
}

#[test]
fn the_broker_url_can_come_from_a_file_and_stays_secret() {
    let mut s = Scenario::new("url_file");
    let url_file = s.path("amqp-url");
    std::fs::write(
        &url_file,
        format!("{}\n", crate::support::broker::amqp_url()),
    )
    .unwrap();
    let url_file = url_file.to_str().unwrap().to_owned();
    // AMQP_URL and AMQP_URL_FILE both set: refused, not guessed, and the
    // URL in the variable is not shown.
    let run = s
        .producer(&["sum", "--random", "1000"])
        .env("AMQP_URL_FILE", &url_file)
        .env("AMQP_URL", "amqp://nobody:nothing@127.0.0.1:1/%2f")
        .run();
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("both AMQP_URL and AMQP_URL_FILE are set: keep one"),
        "{run}"
    );
    assert!(!run.stderr.contains("nothing"), "{run}");

    // A flag beats the environment (which the test harness sets to the
    // broker's URL): a URL file with the right URL works, and so does
    // AMQP_URL_FILE when AMQP_URL is unset.
    let run = s
        .producer(&["sum", "--random", "1000", "--seed", "4", "--workers", "1"])
        .env_remove("AMQP_URL")
        .env("AMQP_URL_FILE", &url_file)
        .run();
    expect_random_sum(&run, "1000", "4");
    let run = s
        .producer(&[
            "sum",
            "--random",
            "1000",
            "--seed",
            "4",
            "--workers",
            "1",
            "--amqp-url-file",
            &url_file,
        ])
        .run();
    expect_random_sum(&run, "1000", "4");

    // A wrong password in the file: refused, with a hint, and never shown.
    let wrong = s.path("wrong-url");
    std::fs::write(&wrong, "amqp://guest:s3cr3t-wrong@127.0.0.1:5672/%2f").unwrap();
    let mut worker = s.start_worker("w0", &["--amqp-url-file", wrong.to_str().unwrap()]);
    let status = worker.wait_exit(std::time::Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "{}", worker.log());
    let log = worker.log();
    assert!(log.contains("guest:***@127.0.0.1"), "{log}");
    assert!(log.contains("password"), "{log}");
    assert!(!log.contains("s3cr3t-wrong"), "{log}");

    let run = s
        .producer(&[
            "sum",
            "--random",
            "10",
            "--amqp-url-file",
            "/nonexistent/url",
        ])
        .run();
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("cannot read the AMQP URL file /nonexistent/url"),
        "{run}"
    );
    s.assert_clean();
}

/// A virtual host made for one test, deleted on drop.
struct Vhost(String);

impl Vhost {
    fn create(name: &str) -> Vhost {
        let ctl = |args: &[&str]| {
            let output = Command::new("rabbitmqctl").args(args).output().unwrap();
            assert!(
                output.status.success(),
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        ctl(&["add_vhost", name]);
        ctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"]);
        Vhost(name.to_owned())
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.0])
            .output();
    }
}

#[test]
fn a_vhost_per_tenant_keeps_its_queues_apart() {
    let s = Scenario::new("vhost");
    let vhost = Vhost::create(&format!("{}-tenant", s.prefix));
    let url = format!("amqp://guest:guest@127.0.0.1:5672/{}", vhost.0);
    let run = s
        .producer(&[
            "sum",
            "--random",
            "1000",
            "--seed",
            "6",
            "--workers",
            "1",
            "--amqp-url",
            &url,
        ])
        .run();
    expect_random_sum(&run, "1000", "6");
    let list = |vhost: &str| {
        let output = Command::new("rabbitmqctl")
            .args([
                "list_queues",
                "-p",
                vhost,
                "--quiet",
                "--no-table-headers",
                "name",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let tasks = format!("{}.tasks", s.prefix);
    assert!(list(&vhost.0).contains(&tasks), "{}", list(&vhost.0));
    assert!(!list("/").contains(&tasks), "the default vhost was used");
}

/// A broker user made for one test, deleted on drop.
struct User(String);

impl User {
    fn create(name: &str, password: &str) -> User {
        let ctl = |args: &[&str]| {
            let output = Command::new("rabbitmqctl").args(args).output().unwrap();
            assert!(
                output.status.success(),
                "rabbitmqctl {}: {}",
                args[0],
                String::from_utf8_lossy(&output.stderr)
            );
        };
        ctl(&["add_user", name, password]);
        let user = User(name.to_owned());
        ctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]);
        user
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.0])
            .output();
    }
}

/// The test broker's URL with other user-info.
fn url_as(userinfo: &str) -> String {
    let url = crate::support::broker::amqp_url();
    let (scheme, rest) = url.split_once("://").expect("the broker URL has a scheme");
    let host_and_path = rest.rsplit_once('@').map_or(rest, |(_, tail)| tail);
    format!("{scheme}://{userinfo}@{host_and_path}")
}

/// Issue 16: a password holding URL characters (and a `%` that looks like
/// an escape) works against the real broker, whether given apart from the
/// URL, as it is (`AMQP_PASSWORD`, `--amqp-password-file`: what the compose
/// file does), or percent-encoded inside the URL.
#[test]
fn a_password_with_url_characters_works_apart_from_the_url_or_encoded_in_it() {
    const PASSWORD: &str = "p@ss:w/rd%41#?x&y=z é";
    let mut s = Scenario::new("password_chars");
    let user = User::create(&format!("{}-user", s.prefix), PASSWORD);
    let plain_url = url_as(&user.0);
    let encoded: String =
        percent_encoding::utf8_percent_encode(PASSWORD, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let encoded_url = url_as(&format!("{}:{encoded}", user.0));

    let password_file = s.path("broker-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let _worker = s.start_worker(
        "w0",
        &[
            "--amqp-url",
            &plain_url,
            "--amqp-password-file",
            password_file.to_str().unwrap(),
        ],
    );
    s.broker.wait_for_consumers(1);

    let run = s
        .producer(&["sum", "--random", "1000", "--seed", "8"])
        .env("AMQP_URL", &encoded_url)
        .run();
    expect_random_sum(&run, "1000", "8");
    let run = s
        .producer(&["sum", "--random", "1000", "--seed", "8"])
        .env("AMQP_URL", &plain_url)
        .env("AMQP_PASSWORD", PASSWORD)
        .run();
    expect_random_sum(&run, "1000", "8");
    assert!(!run.stderr.contains("p@ss"), "{run}");
    s.assert_clean();
}
