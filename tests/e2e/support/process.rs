//! The real `producer` and `worker` binaries as child processes.
//!
//! Children write stdout and stderr to files (no pipe can fill up and block
//! them), are killed and reaped when their guard drops, and every wait has a
//! deadline. When a test fails, each worker's log is printed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use warren_testkit::eventually;

use super::broker::amqp_url;

/// Where cargo put the binaries: next to the directory of this test
/// executable (`target/<profile>/deps/e2e-*` → `target/<profile>/`).
/// `cargo test --workspace` builds them because `producer` and `worker`
/// have integration tests of their own.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds the binaries",
        path.display()
    );
    path
}

/// Sends a signal to a child.
pub fn signal(child: &Child, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
    kill(pid, signal).expect("the child exists until reaped");
}

/// Waits for a child to exit, killing it and failing the test after
/// `timeout`.
pub fn wait_with_deadline(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    /// Kills and reaps the child if the wait fails the test.
    struct KillOnPanic<'a>(&'a mut Child);
    impl Drop for KillOnPanic<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let guard = KillOnPanic(child);
    eventually(timeout, || {
        guard
            .0
            .try_wait()
            .expect("try_wait works")
            .ok_or_else(|| format!("{what} is still running"))
    })
}

/// The one TCP port a child listens on, once it listens: for a server told
/// to listen on port 0, which does not say which port it got.
pub fn listening_port(child: &Child, what: &str) -> u16 {
    eventually(Duration::from_secs(20), || {
        match listening_ports(child.id())[..] {
            [port] => Ok(port),
            ref ports => Err(format!("{what} listens on {ports:?}, not on one port")),
        }
    })
}

/// The TCP ports a process listens on, from `/proc`: its socket inodes
/// matched against the kernel's table of listening sockets.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .filter_map(|link| {
                    let link = link.to_str()?;
                    Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local address (HEXIP:HEXPORT), state (0A = LISTEN), inode.
            if let [_, local, _, "0A", _, _, _, _, _, inode, ..] = fields[..]
                && inodes.iter().any(|i| i == inode)
                && let Some((_, port)) = local.rsplit_once(':')
                && let Ok(port) = u16::from_str_radix(port, 16)
            {
                ports.push(port);
            }
        }
    }
    ports
}

/// A running worker, killed and reaped on drop.
pub struct Worker {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Worker {
    /// Starts `worker --queue-prefix PREFIX --name NAME` plus `args`.
    pub fn start(prefix: &str, name: &str, dir: &Path, args: &[&str]) -> Worker {
        Worker::start_with_env(prefix, name, dir, args, &[])
    }

    /// The same, with extra environment variables.
    pub fn start_with_env(
        prefix: &str,
        name: &str,
        dir: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> Worker {
        let log = dir.join(format!("{name}.log"));
        let log_file = File::create(&log).expect("the temp dir is writable");
        let child = Command::new(binary("worker"))
            .args(["--queue-prefix", prefix, "--name", name])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("AMQP_URL", amqp_url())
            .env("RUST_LOG", "info,worker=debug")
            // Test traffic stays on 127.0.0.1, whatever proxy the machine has.
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("file handles clone"))
            .stderr(log_file)
            .spawn()
            .expect("the worker binary starts");
        Worker {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// The worker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        signal(self.child.as_ref().expect("the worker is running"), sig);
    }

    /// SIGKILL: no cleanup, unacked tasks go back to the queue.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the worker to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("the worker is running");
        let status = wait_with_deadline(child, timeout, &format!("worker {}", self.name));
        self.child = None;
        status
    }

    /// The port of the metrics endpoint of a worker started with
    /// `--metrics-addr 127.0.0.1:0`, once it listens. The worker logs the
    /// address it was given, not the port the system chose, so the port is
    /// read from `/proc`: the only socket a worker listens on is that one.
    pub fn metrics_port(&self) -> u16 {
        let child = self.child.as_ref().expect("the worker is running");
        listening_port(child, &format!("worker {}", self.name))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill_hard();
        if std::thread::panicking() {
            eprintln!(
                "--- log of worker {} ---\n{}--- end ---",
                self.name,
                self.log()
            );
        }
    }
}

/// How a finished producer run went.
#[derive(Debug)]
pub struct Run {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The exit code (`None` if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Fails the test with everything known unless the run exited 0.
    pub fn expect_success(&self) -> &Run {
        assert!(self.status.success(), "producer failed:\n{self}");
        self
    }

    /// Fails the test unless the run exited with `code`.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code(), Some(code), "unexpected exit status:\n{self}");
        self
    }

    /// stdout without its final newline.
    pub fn answer(&self) -> &str {
        self.stdout.trim_end()
    }

    /// stdout parsed as the `--json` object.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.answer())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command: {}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// A producer run being prepared.
pub struct Producer {
    command: Command,
    description: String,
    dir: PathBuf,
    stdin: Option<PathBuf>,
}

impl Producer {
    /// `producer --queue-prefix PREFIX ARGS...`, run in `dir`.
    pub fn new(prefix: &str, dir: &Path, args: &[&str]) -> Producer {
        let mut command = Command::new(binary("producer"));
        command
            .args(["--queue-prefix", prefix])
            .args(args)
            .current_dir(dir)
            .env("AMQP_URL", amqp_url())
            .env_remove("RUST_LOG");
        Producer {
            description: format!("producer --queue-prefix {prefix} {}", args.join(" ")),
            command,
            dir: dir.to_owned(),
            stdin: None,
        }
    }

    /// Feeds a file to stdin.
    pub fn stdin_from(mut self, path: &Path) -> Producer {
        self.stdin = Some(path.to_owned());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Producer {
        self.command.env(key, value);
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(mut self, key: &str) -> Producer {
        self.command.env_remove(key);
        self
    }

    /// Starts it, with output going to files in the test directory.
    pub fn spawn(mut self) -> RunningProducer {
        static SPAWNED: AtomicU64 = AtomicU64::new(0);
        let n = SPAWNED.fetch_add(1, Ordering::Relaxed);
        let stdout = self.dir.join(format!("producer-{n}.out"));
        let stderr = stdout.with_extension("err");
        self.command
            .stdout(File::create(&stdout).expect("the temp dir is writable"))
            .stderr(File::create(&stderr).expect("the temp dir is writable"))
            .stdin(match &self.stdin {
                Some(path) => Stdio::from(File::open(path).expect("the stdin file exists")),
                None => Stdio::null(),
            });
        let child = self.command.spawn().expect("the producer binary starts");
        RunningProducer {
            child: Some(child),
            description: self.description,
            stdout,
            stderr,
        }
    }

    /// Runs it to the end (at most `timeout`).
    pub fn run_within(self, timeout: Duration) -> Run {
        self.spawn().wait(timeout)
    }

    /// Runs it to the end (at most two minutes).
    pub fn run(self) -> Run {
        self.run_within(Duration::from_secs(120))
    }
}

/// A producer started with [`Producer::spawn`].
pub struct RunningProducer {
    child: Option<Child>,
    description: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl RunningProducer {
    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        signal(self.child.as_ref().expect("the producer is running"), sig);
    }

    /// What it has written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("the producer is running");
        child.try_wait().ok().flatten()
    }

    /// Waits for the end (at most `timeout`).
    pub fn wait(mut self, timeout: Duration) -> Run {
        let mut child = self.child.take().expect("the producer is running");
        let status = wait_with_deadline(&mut child, timeout, &self.description);
        Run {
            command: self.description.clone(),
            status,
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }
}

impl Drop for RunningProducer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
