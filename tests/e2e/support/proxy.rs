//! A TCP proxy in front of the test broker that holds a client at an exact
//! point of its AMQP conversation: everything the client sends before the
//! first method frame of a chosen kind goes through, that frame and what
//! follows wait until the test releases them. The broker's side flows
//! freely.
//!
//! It serves one connection, plain `amqp://` only.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use warren_testkit::eventually;

use super::broker::amqp_url;

/// An AMQP method, as (class id, method id).
pub type Method = (u16, u16);

/// `basic.qos`: the producer's last call before `basic.consume` on its
/// reply channel, after the reply queue is declared.
pub const BASIC_QOS: Method = (60, 10);

/// The 8 bytes `AMQP\0\0\x09\x01` a client sends before its first frame.
const PROTOCOL_HEADER_LEN: usize = 8;

/// How long the proxy holds a client if the test never releases it.
const HOLD_AT_MOST: Duration = Duration::from_secs(60);

/// How long the proxy waits for its one client.
const ACCEPT_WITHIN: Duration = Duration::from_secs(60);

/// A running proxy. Dropping it releases the client.
pub struct AmqpProxy {
    addr: SocketAddr,
    held: Receiver<()>,
    release: Option<Sender<()>>,
}

impl AmqpProxy {
    /// Listens on `127.0.0.1:0`, forwards one connection to the test broker,
    /// and holds the client's bytes from the first `method` frame on.
    pub fn hold_at(method: Method) -> AmqpProxy {
        let upstream = upstream_addr();
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port is free");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        let (held_tx, held) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let Some(client) = accept_within(&listener, ACCEPT_WITHIN) else {
                return;
            };
            let server = TcpStream::connect(upstream).expect("the broker accepts connections");
            let (client_in, server_out) = (
                client.try_clone().expect("sockets clone"),
                server.try_clone().expect("sockets clone"),
            );
            std::thread::spawn(move || {
                forward_client(client_in, server_out, method, &held_tx, &release_rx);
            });
            forward_server(server, client);
        });
        AmqpProxy {
            addr,
            held,
            release: Some(release),
        }
    }

    /// The test broker's URL with the proxy in its place.
    pub fn url(&self) -> String {
        broker_url_at(self.addr)
    }

    /// Waits until the client has sent the held method, or fails the test.
    pub fn wait_until_held(&self, timeout: Duration) {
        self.held
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("the client never reached the held method: {e}"));
    }

    /// Lets the held bytes, and all that follow, through.
    pub fn release(&mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
    }
}

/// The test broker's URL with `addr` in place of its host and port.
pub fn broker_url_at(addr: SocketAddr) -> String {
    let url = amqp_url();
    let (scheme, rest) = url.split_once("://").expect("the broker URL has a scheme");
    assert_eq!(scheme, "amqp", "the proxies speak plain amqp:// only");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let userinfo = authority
        .rsplit_once('@')
        .map_or(String::new(), |(u, _)| format!("{u}@"));
    format!("amqp://{userinfo}{addr}/{path}")
}

/// The test broker's address.
fn upstream_addr() -> SocketAddr {
    let uri: lapin::uri::AMQPUri = amqp_url().parse().expect("the broker URL parses");
    let host = uri.authority.host;
    let port = uri.authority.port;
    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve the broker host {host}"))
}

fn accept_within(listener: &TcpListener, timeout: Duration) -> Option<TcpStream> {
    listener
        .set_nonblocking(true)
        .expect("listeners can be non-blocking");
    // `Ok(None)`: the listener failed; `Err`: no client yet.
    let accepted = eventually(timeout, || match listener.accept() {
        Ok((stream, _)) => Ok(Some(stream)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            Err("no client has connected to the proxy")
        }
        Err(_) => Ok(None),
    })?;
    accepted
        .set_nonblocking(false)
        .expect("sockets can be blocking");
    Some(accepted)
}

/// Client to broker: forwards whole frames until the held method's frame
/// starts, then waits for the release before forwarding the rest.
fn forward_client(
    mut client: TcpStream,
    mut server: TcpStream,
    method: Method,
    held: &Sender<()>,
    release: &Receiver<()>,
) {
    // Bytes received and not yet forwarded; `forwarded` counts the others.
    let mut pending: Vec<u8> = Vec::new();
    let mut forwarded = 0usize;
    // Where the next frame starts, counted from the first byte received.
    // A frame is type (1 byte), channel (2), payload size (4), payload,
    // end marker (1); a method frame's payload opens with class and method.
    let mut frame_start = PROTOCOL_HEADER_LEN;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match client.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        let received = forwarded + pending.len();
        let mut holding = false;
        while frame_start + 7 <= received {
            let at = frame_start - forwarded;
            let frame_type = pending[at];
            let size = u32::from_be_bytes([
                pending[at + 3],
                pending[at + 4],
                pending[at + 5],
                pending[at + 6],
            ]) as usize;
            if frame_type == 1 {
                if frame_start + 11 > received {
                    break;
                }
                let class = u16::from_be_bytes([pending[at + 7], pending[at + 8]]);
                let id = u16::from_be_bytes([pending[at + 9], pending[at + 10]]);
                if (class, id) == method {
                    holding = true;
                    break;
                }
            }
            frame_start += 8 + size;
        }
        // Only bytes before the frame being looked at go through.
        let ready = frame_start.min(received) - forwarded;
        if server.write_all(&pending[..ready]).is_err() {
            break;
        }
        pending.drain(..ready);
        forwarded += ready;
        if holding {
            let _ = held.send(());
            // Released, dropped, or given up on: the rest goes through.
            let _ = release.recv_timeout(HOLD_AT_MOST);
            if server.write_all(&pending).is_ok() {
                let _ = std::io::copy(&mut client, &mut server);
            }
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Write);
}

/// One direction, unchanged (broker to client, or either way for
/// [`Forwarder`]): copies until the end, then closes the write side.
fn forward_server(mut server: TcpStream, mut client: TcpStream) {
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(Shutdown::Write);
}

/// A plain TCP forwarder to the test broker on a port reserved before:
/// a broker that "starts" when the test says so. It stops accepting when
/// dropped.
pub struct Forwarder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How long a forwarder serves at most if the test never drops it.
const FORWARD_AT_MOST: Duration = Duration::from_secs(180);

impl Forwarder {
    /// Starts listening on `port` and forwards each connection to the test
    /// broker.
    pub fn start_on(port: ClosedPort) -> Forwarder {
        let upstream = upstream_addr();
        let listener = port.open();
        listener
            .set_nonblocking(true)
            .expect("listeners can be non-blocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        // A server's lifetime, not a wait: bounded so that a test that
        // forgets to drop it leaves no thread behind for long.
        std::thread::spawn(move || {
            let deadline = Instant::now() + FORWARD_AT_MOST;
            while Instant::now() < deadline && !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => forward_both_ways(client, upstream),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => return,
                }
            }
        });
        Forwarder { stop }
    }
}

/// Connects `client` to the broker at `upstream`, each direction in a
/// thread of its own.
fn forward_both_ways(client: TcpStream, upstream: SocketAddr) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(client_in), Ok(server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || forward_server(client_in, server_out));
    std::thread::spawn(move || forward_server(server, client));
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A port of 127.0.0.1 held by this test and refusing connections: the
/// socket is bound, so no other process can take the port, but it does
/// not listen, so a client's connect is refused as if nothing were there.
/// [`ClosedPort::open`] starts listening on the very same socket.
pub struct ClosedPort {
    socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl ClosedPort {
    /// Binds a fresh port without listening.
    pub fn reserve() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket can be made");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("a local port is free");
        let addr = socket.local_addr().expect("a bound socket has an address");
        ClosedPort { socket, addr }
    }

    /// The address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts listening: from now on connections are accepted.
    pub fn open(self) -> TcpListener {
        // tokio's `listen` registers the socket with a runtime's reactor;
        // `into_std` takes it back out, so a throwaway runtime is enough.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("a small runtime builds");
        let _entered = runtime.enter();
        self.socket
            .listen(16)
            .and_then(tokio::net::TcpListener::into_std)
            .expect("a bound socket can listen")
    }
}

/// A TCP proxy to any broker address that can cut every connection it
/// carries at once, as a network fault would: both sockets of each pair are
/// shut down, so the client sees its connection drop mid-conversation. New
/// connections are accepted as before. It stops accepting when dropped.
pub struct CuttingProxy {
    addr: SocketAddr,
    live: std::sync::Arc<Mutex<Vec<TcpStream>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How long a cutting proxy serves at most if the test never drops it.
const CUTTING_PROXY_AT_MOST: Duration = Duration::from_secs(30 * 60);

impl CuttingProxy {
    /// Listens on `127.0.0.1:0` and forwards each connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port is free");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        listener
            .set_nonblocking(true)
            .expect("listeners can be non-blocking");
        let live = std::sync::Arc::new(Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sockets, stopped) = (std::sync::Arc::clone(&live), std::sync::Arc::clone(&stop));
        // A server's lifetime, bounded as the forwarder's is.
        std::thread::spawn(move || {
            let deadline = Instant::now() + CUTTING_PROXY_AT_MOST;
            while Instant::now() < deadline && !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => forward_and_keep(client, upstream, &sockets),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => return,
                }
            }
        });
        CuttingProxy { addr, live, stop }
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` through the proxy.
    pub fn url(&self) -> String {
        broker_url_at(self.addr)
    }

    /// Cuts every connection the proxy carries now; returns how many.
    pub fn cut_all(&self) -> usize {
        let sockets = std::mem::take(&mut *lock(&self.live));
        for socket in &sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
        sockets.len() / 2
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.cut_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`forward_both_ways`], keeping a handle on both sockets for
/// [`CuttingProxy::cut_all`]. A broker that does not answer (it is being
/// restarted) closes the client's connection at once.
fn forward_and_keep(client: TcpStream, upstream: SocketAddr, live: &Mutex<Vec<TcpStream>>) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
        return;
    };
    let handles = (client.try_clone(), server.try_clone());
    let (Ok(client_handle), Ok(server_handle)) = handles else {
        return;
    };
    lock(live).extend([client_handle, server_handle]);
    let (Ok(client_in), Ok(server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || forward_server(client_in, server_out));
    std::thread::spawn(move || forward_server(server, client));
}
