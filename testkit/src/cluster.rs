//! [`RabbitCluster`]: a RabbitMQ cluster of three nodes on this machine, for
//! tests of what survives the loss of a node, or a single node of a test's
//! own ([`RabbitCluster::start_with`]`(1)`), for tests that restart the
//! whole broker.
//!
//! The nodes come from the installed RabbitMQ (Debian's `rabbitmq-server`
//! package; another install is found through `RABBITMQ_SBIN`). Each has its
//! own name (`warren-cN-PID-K@localhost`), its own AMQP and distribution
//! ports on 127.0.0.1, and its own configuration, data and log directories
//! in a temporary directory; they share the Erlang cookie of the machine's
//! default node, so that a plain `rabbitmqctl -n NODE ...` reaches them too.
//! The second and third nodes join the first with `rabbitmqctl
//! join_cluster`. No plugin is enabled: no management listener can clash
//! with the default node's.
//!
//! Every command names its node with `-n`: the default node (`rabbit@...`
//! on port 5672, which the other tests share) is never stopped, reset or
//! reconfigured. Dropping the cluster SIGKILLs its nodes and removes their
//! directories. Every wait is bounded.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// Where Debian's package keeps the real scripts (those on `PATH` are
/// wrappers that switch to the `rabbitmq` user, which could not write our
/// temporary directory).
const DEBIAN_SBIN: &str = "/usr/lib/rabbitmq/bin";
/// Short node names need a host that resolves to this machine; the Debian
/// package names its default node `rabbit@localhost` too.
const NODE_HOST: &str = "localhost";
/// How many nodes a cluster has.
pub const NODES: usize = 3;
/// Bound on a node's boot (the Erlang VM and the broker application).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on one `rabbitmqctl` command.
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on a killed node's process going away.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// The CLI tools' own distribution ports: never hand them to a node.
const CLI_DIST_PORTS: std::ops::RangeInclusive<u16> = 35672..=35682;

/// One node of a [`RabbitCluster`].
#[derive(Debug)]
pub struct Node {
    /// The Erlang node name, `warren-cN-PID-K@localhost`.
    pub name: String,
    /// Its AMQP port on 127.0.0.1.
    pub port: u16,
    /// Its Erlang distribution port.
    dist_port: u16,
    /// Its data, log and configuration directory.
    dir: PathBuf,
    /// The `rabbitmq-server` script, which stays as the VM's parent.
    child: Option<Child>,
    /// The Erlang VM's OS pid, once the node answers.
    os_pid: Option<i32>,
}

impl Node {
    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` (guest may log in over
    /// loopback).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Whether the node still runs (it was not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// Three RabbitMQ nodes joined in a cluster; killed and removed on drop.
#[derive(Debug)]
pub struct RabbitCluster {
    nodes: Vec<Node>,
    /// HOME of the nodes and of our `rabbitmqctl` calls: it holds the
    /// cookie.
    home: PathBuf,
    sbin: PathBuf,
    startup: Duration,
}

impl RabbitCluster {
    /// Starts three nodes, joins the second and third to the first, and
    /// waits until all three run in one cluster.
    ///
    /// # Panics
    /// When RabbitMQ is not installed or a node does not boot or join in
    /// time; the message names the node, the command and its log.
    pub fn start() -> RabbitCluster {
        RabbitCluster::start_with(NODES)
    }

    /// Starts `nodes` nodes in one cluster, as [`RabbitCluster::start`]
    /// does; one node is a broker of the test's own, which it may kill and
    /// restart as a whole.
    ///
    /// # Panics
    /// As [`RabbitCluster::start`].
    pub fn start_with(nodes: usize) -> RabbitCluster {
        static CLUSTERS: AtomicU32 = AtomicU32::new(0);
        let started = Instant::now();
        let k = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let home = std::env::temp_dir().join(format!("warren-cluster-{}-{k}", std::process::id()));
        // A leftover of an earlier run with the same pid holds stale data.
        let _ = fs::remove_dir_all(&home);
        fs::create_dir_all(&home).expect("the temp dir is writable");
        write_cookie(&home);
        // Our own, empty: the machine's rabbitmq-env.conf names the default
        // node, and its settings must not reach ours.
        fs::write(home.join("rabbitmq-env.conf"), "").expect("the temp dir is writable");
        let mut cluster = RabbitCluster {
            nodes: Vec::new(),
            home,
            sbin: find_sbin(),
            startup: Duration::ZERO,
        };
        let ports = free_ports(2 * nodes);
        for (i, pair) in ports.chunks(2).enumerate() {
            let name = format!("warren-c{}-{}-{k}@{NODE_HOST}", i + 1, std::process::id());
            let node = cluster.spawn_node(name, pair[0], pair[1]);
            cluster.nodes.push(node);
        }
        for i in 0..nodes {
            cluster.await_boot(i);
        }
        let first = cluster.nodes[0].name.clone();
        for i in 1..nodes {
            cluster.ctl_ok(i, &["stop_app"]);
            cluster.ctl_ok(i, &["join_cluster", &first]);
            cluster.ctl_ok(i, &["start_app"]);
        }
        cluster.await_running_nodes(nodes);
        cluster.startup = started.elapsed();
        cluster
    }

    /// How long [`RabbitCluster::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The nodes, in the order they were started (the first is the one the
    /// others joined).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Every node's URL, in order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Runs `rabbitmqctl -n NODE ARGS...` against node `i`, bounded.
    ///
    /// # Panics
    /// When the command cannot be run or does not end in time.
    pub fn rabbitmqctl(&self, i: usize, args: &[&str]) -> Output {
        let mut command = Command::new(self.sbin.join("rabbitmqctl"));
        command
            .args(["-n", &self.nodes[i].name])
            .args(args)
            .envs(self.common_env());
        run_bounded(command, CTL_TIMEOUT)
    }

    /// `rabbitmqctl list_WHAT --quiet --no-table-headers COLUMNS...` on a
    /// running node (any node lists the whole cluster), one row of fields
    /// per line.
    ///
    /// # Panics
    /// When no running node answers.
    pub fn list(&self, what: &str, columns: &[&str]) -> Vec<Vec<String>> {
        let command = format!("list_{what}");
        let mut args = vec![command.as_str(), "--quiet", "--no-table-headers"];
        args.extend_from_slice(columns);
        let output = self.ctl_ok(self.running_node(), &args);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| line.split('\t').map(str::to_owned).collect::<Vec<_>>())
            .filter(|row| row.len() == columns.len())
            .collect()
    }

    /// The node (its index) that holds the connection whose name contains
    /// `fragment`; `None` when no such connection is open.
    ///
    /// # Panics
    /// When no running node answers.
    pub fn node_of_connection(&self, fragment: &str) -> Option<usize> {
        // The name a client gives its connection is among its client
        // properties (`name` is the peer address).
        self.list("connections", &["port", "client_properties"])
            .iter()
            .find(|row| row[1].contains(fragment))
            .and_then(|row| {
                let port: u16 = row[0].trim().parse().ok()?;
                self.nodes.iter().position(|node| node.port == port)
            })
    }

    /// Names and message counts of the queues whose name starts with
    /// `prefix`.
    ///
    /// # Panics
    /// When no running node answers.
    pub fn queues_with_prefix(&self, prefix: &str) -> Vec<(String, u64)> {
        self.list("queues", &["name", "messages"])
            .into_iter()
            .filter(|row| row[0].starts_with(prefix))
            .filter_map(|row| Some((row[0].clone(), row[1].trim().parse().ok()?)))
            .collect()
    }

    /// Starts node `i` again after [`RabbitCluster::kill_node`], with its
    /// name, ports and data: it rejoins the cluster as it boots.
    ///
    /// # Panics
    /// When the node runs or does not boot and rejoin in time.
    pub fn restart_node(&mut self, i: usize) {
        assert!(!self.nodes[i].is_running(), "node {i} still runs");
        let running = self.nodes.iter().filter(|node| node.is_running()).count();
        let (name, port, dist_port) = {
            let node = &self.nodes[i];
            (node.name.clone(), node.port, node.dist_port)
        };
        self.nodes[i] = self.spawn_node(name, port, dist_port);
        self.await_boot(i);
        self.await_running_nodes(running + 1);
    }

    /// SIGKILLs node `i`'s Erlang VM, as a crash or a pulled plug would end
    /// it, and waits until the process is gone.
    ///
    /// # Panics
    /// When the node is already gone or does not die in time.
    pub fn kill_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut child = node.child.take().expect("the node is running");
        let os_pid = node.os_pid.expect("a booted node's pid is known");
        kill(Pid::from_raw(os_pid), Signal::SIGKILL).expect("the node's VM exists");
        // The script waits on the VM, so its exit shows the VM's.
        let deadline = Instant::now() + KILL_TIMEOUT;
        while child.try_wait().expect("try_wait works").is_none() {
            assert!(
                Instant::now() < deadline,
                "node {} did not die within {KILL_TIMEOUT:?} of SIGKILL",
                node.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever the VM left (its port programs) goes with its group.
        let _ = killpg(Pid::from_raw(pid_of(&child)), Signal::SIGKILL);
    }

    /// The first node still running.
    fn running_node(&self) -> usize {
        self.nodes
            .iter()
            .position(Node::is_running)
            .expect("a node of the cluster still runs")
    }

    /// Starts one node's VM (not yet booted on return).
    fn spawn_node(&self, name: String, port: u16, dist_port: u16) -> Node {
        let dir = self.home.join(name.split('@').next().unwrap_or(&name));
        fs::create_dir_all(&dir).expect("the temp dir is writable");
        let write = |file: &str, text: String| {
            fs::write(dir.join(file), text).expect("the temp dir is writable");
        };
        write(
            "rabbitmq.conf",
            format!("listeners.tcp.1 = 127.0.0.1:{port}\n"),
        );
        write("enabled_plugins", "[].\n".to_owned());
        let log = fs::File::create(dir.join("stdout.log")).expect("the temp dir is writable");
        let mut command = Command::new(self.sbin.join("rabbitmq-server"));
        command
            .current_dir(&dir)
            .envs(self.common_env())
            .env("RABBITMQ_NODENAME", &name)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("file handles clone"))
            .stderr(log)
            // A group of its own, so that drop can end whatever it started.
            .process_group(0);
        let child = command.spawn().expect("rabbitmq-server starts");
        Node {
            name,
            port,
            dist_port,
            dir,
            child: Some(child),
            os_pid: None,
        }
    }

    /// What every node and every `rabbitmqctl` call gets: the cookie's
    /// home, our env file, and distribution on loopback only.
    fn common_env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        vec![
            ("HOME", self.home.clone().into()),
            (
                "RABBITMQ_CONF_ENV_FILE",
                self.home.join("rabbitmq-env.conf").into(),
            ),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            (
                "ERL_FLAGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".into(),
            ),
        ]
    }

    /// Waits until node `i` has booted, and learns its VM's pid.
    fn await_boot(&mut self, i: usize) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            // Fails at once while the node is not registered with epmd yet;
            // once it is, waits for the boot to end.
            let output = self.rabbitmqctl(i, &["await_startup", "--timeout", "60"]);
            if output.status.success() {
                break;
            }
            let node = &mut self.nodes[i];
            let exited = node
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "node {} did not boot (exited: {exited:?}) within {BOOT_TIMEOUT:?}:\n{}\n{}",
                node.name,
                describe(&output),
                log_tail(&node.dir)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        let output = self.ctl_ok(i, &["eval", "os:getpid()."]);
        let text = String::from_utf8_lossy(&output.stdout);
        let pid = text
            .trim()
            .trim_matches('"')
            .parse()
            .unwrap_or_else(|_| panic!("node {} gave no OS pid: {text:?}", self.nodes[i].name));
        self.nodes[i].os_pid = Some(pid);
    }

    /// Waits until a running node sees `n` running nodes in its cluster.
    fn await_running_nodes(&self, n: usize) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let asking = self.running_node();
            let output = self.ctl_ok(asking, &["eval", "length(rabbit_nodes:all_running())."]);
            let text = String::from_utf8_lossy(&output.stdout);
            if text.trim() == n.to_string() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster has {} running node(s), not {n}, after {BOOT_TIMEOUT:?}",
                text.trim()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// [`RabbitCluster::rabbitmqctl`], failing the test unless it succeeds.
    fn ctl_ok(&self, i: usize, args: &[&str]) -> Output {
        let output = self.rabbitmqctl(i, args);
        assert!(
            output.status.success(),
            "rabbitmqctl -n {} {} failed:\n{}\n{}",
            self.nodes[i].name,
            args.join(" "),
            describe(&output),
            log_tail(&self.nodes[i].dir)
        );
        output
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(pid) = node.os_pid.filter(|_| node.child.is_some()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if let Some(mut child) = node.child.take() {
                let _ = killpg(Pid::from_raw(pid_of(&child)), Signal::SIGKILL);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!("--- log of node {} ---\n{}", node.name, log_tail(&node.dir));
            }
        }
        let _ = fs::remove_dir_all(&self.home);
    }
}

/// The directory of the real `rabbitmq-server` and `rabbitmqctl` scripts:
/// `RABBITMQ_SBIN`, else Debian's.
fn find_sbin() -> PathBuf {
    let sbin =
        std::env::var_os("RABBITMQ_SBIN").map_or_else(|| PathBuf::from(DEBIAN_SBIN), PathBuf::from);
    assert!(
        sbin.join("rabbitmq-server").is_file(),
        "no rabbitmq-server in {}: install Debian's rabbitmq-server package, or set \
         RABBITMQ_SBIN to the directory of RabbitMQ's own scripts",
        sbin.display()
    );
    sbin
}

/// Copies the default node's Erlang cookie into `home`, or makes one up
/// when it cannot be read (the nodes then only share it among themselves).
fn write_cookie(home: &Path) {
    let own_home = std::env::var_os("HOME").map(PathBuf::from);
    let cookie = own_home
        .into_iter()
        .chain([PathBuf::from("/var/lib/rabbitmq")])
        .find_map(|dir| fs::read_to_string(dir.join(".erlang.cookie")).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| format!("WARRENTESTCOOKIE{}", std::process::id()));
    let path = home.join(".erlang.cookie");
    fs::write(&path, cookie).expect("the temp dir is writable");
    // Erlang refuses a cookie file that others can read.
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).expect("we own the file");
}

/// `n` distinct free ports on 127.0.0.1, none of the CLI tools' range.
fn free_ports(n: usize) -> Vec<u16> {
    // Held together, so the system hands out distinct ports; released just
    // before the nodes bind them.
    let mut held = Vec::new();
    for _ in 0..n * 4 {
        if held.len() == n {
            break;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port is free");
        let port = listener
            .local_addr()
            .expect("a bound socket has an address")
            .port();
        if !CLI_DIST_PORTS.contains(&port) {
            held.push(listener);
        }
    }
    assert_eq!(held.len(), n, "not enough free local ports");
    held.iter()
        .map(|l| {
            l.local_addr()
                .expect("a bound socket has an address")
                .port()
        })
        .collect()
}

/// Runs `command`, killing it and failing the test after `timeout`.
fn run_bounded(mut command: Command, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rabbitmqctl starts");
    // Read in threads, so a full pipe cannot block the command.
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out = std::thread::spawn(move || read_all(&mut stdout));
    let err = std::thread::spawn(move || read_all(&mut stderr));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait works") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn read_all(reader: &mut impl std::io::Read) -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = reader.read_to_end(&mut bytes);
    bytes
}

fn pid_of(child: &Child) -> i32 {
    i32::try_from(child.id()).expect("pids fit in i32")
}

fn describe(output: &Output) -> String {
    format!(
        "status: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The last lines of a node's own output and log file.
fn log_tail(dir: &Path) -> String {
    let mut tail = String::new();
    let logs = fs::read_dir(dir.join("log"))
        .into_iter()
        .flatten()
        .flatten();
    for path in std::iter::once(dir.join("stdout.log")).chain(logs.map(|e| e.path())) {
        let text = fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let _ = writeln!(tail, "== {} ==", path.display());
        for line in &lines[lines.len().saturating_sub(30)..] {
            let _ = writeln!(tail, "{line}");
        }
    }
    tail
}
