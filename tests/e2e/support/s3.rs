//! An S3-compatible server on 127.0.0.1 for sums by reference: moto's
//! standalone server (`pip install "moto[server]"`), which runs offline.
//! It is killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::python::reference;

/// A running `moto_server`.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl S3Server {
    /// Starts one on a free port. With `enforce_auth`, every request must
    /// be signed with credentials the server knows, and it knows none: all
    /// requests are refused with 403, as with wrong credentials.
    pub fn start(enforce_auth: bool) -> S3Server {
        let mut command = Command::new("moto_server");
        command
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if enforce_auth {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let mut child = command
            .spawn()
            .expect("moto_server runs (pip install 'moto[server]'; scripts/test installs it)");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        // Reads the port from the start-up line, then keeps draining the
        // request log so that the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("Running on http://127.0.0.1:") {
                    let port: String = line[at + "Running on http://127.0.0.1:".len()..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    let _ = port_tx.send(port);
                }
            }
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("moto_server reports its port within 60 s");
        S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Creates `bucket` if needed and uploads `path` as `key`.
    pub fn put(&self, bucket: &str, key: &str, path: &std::path::Path) {
        reference(&[
            "s3-put",
            &self.endpoint,
            bucket,
            key,
            path.to_str().expect("temp paths are UTF-8"),
        ]);
    }

    /// The environment a producer or worker needs to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
