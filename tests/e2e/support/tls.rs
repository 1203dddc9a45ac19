//! A RabbitMQ TLS listener for one test: a CA, a server and a client
//! certificate made by the test (rcgen), and a listener on a free port of
//! the shared broker, started at run time through `rabbitmqctl eval` and
//! stopped on drop.

use std::net::TcpListener as PortProbe;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files of a throw-away PKI, in a directory the broker can read.
pub struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    /// A CA, a server certificate for `localhost` (not for `127.0.0.1`, so
    /// that a test can connect under a name the certificate does not name),
    /// and a client certificate, all signed by the CA.
    pub fn generate() -> Certificates {
        let dir = tempfile::Builder::new()
            .prefix("warren-tls-")
            .tempdir()
            .expect("a temp dir can be made");
        // The broker runs as its own user and must read the server's files.
        set_mode(dir.path(), 0o755);

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "warren test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a key"))
            .expect("the CA signs itself");

        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, stem: &str| {
            let mut params = CertificateParams::new(names).expect("valid names");
            params
                .distinguished_name
                .push(DnType::CommonName, format!("warren test {stem}"));
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("a key");
            let cert = params.signed_by(&key, &ca).expect("the CA signs");
            write(dir.path(), &format!("{stem}.pem"), &cert.pem());
            write(dir.path(), &format!("{stem}.key"), &key.serialize_pem());
        };
        write(dir.path(), "ca.pem", &ca.pem());
        leaf(
            vec!["localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "server",
        );
        leaf(
            vec!["client.warren.test".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            "client",
        );
        Certificates { dir }
    }

    /// A file of the PKI: `ca.pem`, `server.pem`, `server.key`,
    /// `client.pem` or `client.key`.
    pub fn file(&self, name: &str) -> String {
        self.dir
            .path()
            .join(name)
            .to_str()
            .expect("temp paths are UTF-8")
            .to_owned()
    }
}

fn write(dir: &Path, name: &str, contents: &str) {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, contents).expect("the temp dir is writable");
    set_mode(&path, 0o644);
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .expect("permissions can be set");
}

/// Whether the listener asks clients for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Server authentication only.
    None,
    /// The broker refuses clients without a certificate signed by the CA.
    Required,
}

/// An AMQPS listener of the shared broker, stopped on drop.
pub struct TlsListener {
    pub port: u16,
}

impl TlsListener {
    /// Starts a listener on a free port of 127.0.0.1 with the PKI's server
    /// certificate.
    pub fn start(certificates: &Certificates, client_auth: ClientAuth) -> TlsListener {
        // The broker binds this port, not the test, so it can only be
        // chosen free and handed over: RabbitMQ's `start_ssl_listener` is
        // given a fixed port and its listener is stopped by that port. In
        // the window between the two another process could take it.
        let port = PortProbe::bind("127.0.0.1:0")
            .and_then(|probe| probe.local_addr())
            .expect("a free port")
            .port();
        let verify = match client_auth {
            ClientAuth::None => "{verify, verify_none}, {fail_if_no_peer_cert, false}",
            ClientAuth::Required => "{verify, verify_peer}, {fail_if_no_peer_cert, true}",
        };
        let expression = format!(
            r#"rabbit_networking:start_ssl_listener({{"127.0.0.1", {port}}}, [{{cacertfile, "{ca}"}}, {{certfile, "{cert}"}}, {{keyfile, "{key}"}}, {verify}], 1)."#,
            ca = certificates.file("ca.pem"),
            cert = certificates.file("server.pem"),
            key = certificates.file("server.key"),
        );
        eval(&expression);
        TlsListener { port }
    }

    /// An `amqps://` URL of this listener for the local guest user.
    pub fn url(&self, host: &str) -> String {
        format!("amqps://guest:guest@{host}:{}/%2f", self.port)
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        let expression = format!(
            r#"rabbit_networking:stop_tcp_listener({{"127.0.0.1", {}}})."#,
            self.port
        );
        let _ = Command::new("rabbitmqctl")
            .args(["eval", &expression])
            .output();
    }
}

/// Runs an Erlang expression on the broker and insists it answers `ok`.
fn eval(expression: &str) {
    let output = Command::new("rabbitmqctl")
        .args(["eval", expression])
        .output()
        .expect("rabbitmqctl runs (the TLS tests start a listener with it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim() == "ok",
        "rabbitmqctl eval {expression} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
