//! Fixtures shared by warren's end-to-end tests and its benchmarks: the
//! scripted [`HttpFixture`] below, [`FileServer`], a static file server
//! with Range support for sums by reference, [`eventually`], the bounded
//! wait every test uses, and [`RabbitCluster`], three RabbitMQ nodes in a
//! cluster on this machine.
//!
//! [`HttpFixture`] is a real HTTP/1.1 server (axum on hyper) on
//! `127.0.0.1:0`, with scripted behaviours chosen by the request path:
//!
//! | path | behaviour |
//! | --- | --- |
//! | `/files/...?size=N` | `N` bytes of deterministic content (see [`content`]) with `Content-Length` |
//! | `/status/CODE` | that status |
//! | `/flaky/ID?fail=K&status=S&size=N` | the first `K` requests get status `S` (default 2 × 503), then content |
//! | `/retry-after/ID?seconds=T&size=N` | the first request gets 429 with `Retry-After: T`, then content |
//! | `/slow/ID?delay_ms=D` | waits `D` ms before answering |
//! | `/trickle/ID?size=N&chunk=C&delay_ms=D` | `N` bytes with `Content-Length`, `C` bytes every `D` ms |
//! | `/nolength/ID?size=N` | `N` bytes streamed without `Content-Length` |
//! | `/redirect/K?size=N` | a chain of `K` redirects ending in content |
//! | `/loop` | redirects to itself |
//! | anything else | content keyed by the path (`?size=N`, default 512) |
//!
//! Content depends only on the path (without the query) and the size, so a
//! test computes what a download must contain with [`content`]. Every
//! request is recorded with its time ([`HttpFixture::hits`]).

pub mod cluster;
mod eventually;
mod range;
mod server;

pub use cluster::{ClusterOptions, RabbitCluster};
pub use eventually::eventually;
pub use range::FileServer;
use server::ServerThread;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The deterministic content of `path` at `size` bytes (xorshift64 bytes
/// seeded from the path).
pub fn content(path: &str, size: usize) -> Vec<u8> {
    let mut state = path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[derive(Default)]
struct Shared {
    /// Generated bodies, so that serving a file costs no generation (the
    /// benchmarks fetch the same files many times).
    bodies: Mutex<HashMap<(String, u64), Bytes>>,
    hits: Mutex<HashMap<String, Vec<Instant>>>,
    /// Bytes handed to the network by `/trickle/` responses, by path.
    sent: Mutex<HashMap<String, u64>>,
}

impl Shared {
    /// Records a request and returns how many came before it.
    fn hit(&self, path: &str) -> usize {
        // A poisoned lock still holds consistent data; ignore the poison.
        let mut hits = self.hits.lock().unwrap_or_else(PoisonError::into_inner);
        let times = hits.entry(path.to_owned()).or_default();
        times.push(Instant::now());
        times.len() - 1
    }
}

/// A running fixture server; stopped when dropped.
pub struct HttpFixture {
    server: ServerThread,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HttpFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFixture")
            .field("addr", &self.server.addr())
            .finish_non_exhaustive()
    }
}

impl HttpFixture {
    /// Starts a server on `127.0.0.1:0` in a thread of its own.
    ///
    /// # Panics
    /// When no local port can be bound.
    pub fn start() -> HttpFixture {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .fallback(respond)
            .with_state(Arc::clone(&shared));
        HttpFixture {
            server: ServerThread::start(app),
            shared,
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT` followed by `path_and_query`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.server.addr(), path_and_query)
    }

    /// When each request for `path` (no query) arrived.
    pub fn hits(&self, path: &str) -> Vec<Instant> {
        self.shared
            .hits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    /// Requests received in all.
    pub fn total_hits(&self) -> usize {
        self.shared
            .hits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Bytes a `/trickle/` response for `path` has sent so far.
    pub fn bytes_sent(&self, path: &str) -> u64 {
        self.shared
            .sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn number(query: &HashMap<String, String>, key: &str, default: u64) -> u64 {
    query
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn full(shared: &Shared, path: &str, size: u64) -> Response {
    let body = shared
        .bodies
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry((path.to_owned(), size))
        .or_insert_with(|| Bytes::from(content(path, size as usize)))
        .clone();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        body,
    )
        .into_response()
}

fn redirect(to: String) -> Response {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, to)
        .body(Body::empty())
        .expect("a redirect response builds")
}

async fn respond(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let path = uri.path().to_owned();
    let previous = shared.hit(&path);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let size = number(&query, "size", 512);
    match segments.as_slice() {
        ["files", ..] => full(&shared, &path, size),
        ["status", code] => {
            let code = code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok());
            (code.unwrap_or(StatusCode::BAD_REQUEST), "scripted status").into_response()
        }
        ["flaky", _] => {
            let status = StatusCode::from_u16(number(&query, "status", 503) as u16)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            if (previous as u64) < number(&query, "fail", 2) {
                (status, "not yet").into_response()
            } else {
                full(&shared, &path, size)
            }
        }
        ["retry-after", _] => {
            if previous == 0 {
                let seconds = number(&query, "seconds", 1).to_string();
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, seconds)],
                    "slow down",
                )
                    .into_response()
            } else {
                full(&shared, &path, size)
            }
        }
        ["slow", _] => {
            tokio::time::sleep(Duration::from_millis(number(&query, "delay_ms", 1000))).await;
            full(&shared, &path, size)
        }
        ["trickle", _] => trickle(&shared, &path, &query),
        ["nolength", _] => {
            let data = Bytes::from(content(&path, size as usize));
            let pieces: Vec<Result<Bytes, std::io::Error>> = (0..data.len())
                .step_by(65536)
                .map(|start| Ok(data.slice(start..(start + 65536).min(data.len()))))
                .collect();
            Response::new(Body::from_stream(futures_lite::stream::iter(pieces)))
        }
        ["redirect", hops] => match hops.parse::<u32>() {
            Ok(0) | Err(_) => full(&shared, &path, size),
            Ok(n) => redirect(format!("/redirect/{}?size={size}", n - 1)),
        },
        ["loop"] => redirect("/loop".to_owned()),
        _ => full(&shared, &path, size),
    }
}

/// Sends the content in small pieces with pauses, counting what was sent.
fn trickle(shared: &Arc<Shared>, path: &str, query: &HashMap<String, String>) -> Response {
    let size = number(query, "size", 1 << 20) as usize;
    let piece = number(query, "chunk", 65536).max(1) as usize;
    let delay = Duration::from_millis(number(query, "delay_ms", 10));
    let data = Bytes::from(content(path, size));
    let state = (Arc::clone(shared), path.to_owned(), data, 0usize);
    let stream =
        futures_lite::stream::unfold(state, move |(shared, path, data, offset)| async move {
            if offset >= data.len() {
                return None;
            }
            if offset > 0 {
                tokio::time::sleep(delay).await;
            }
            let end = (offset + piece).min(data.len());
            *shared
                .sent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(path.clone())
                .or_default() = end as u64;
            let chunk: Result<Bytes, std::io::Error> = Ok(data.slice(offset..end));
            Some((chunk, (shared, path, data, end)))
        });
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_deterministic_and_path_dependent() {
        assert_eq!(content("/a", 100), content("/a", 100));
        assert_ne!(content("/a", 100), content("/b", 100));
        assert_eq!(content("/a", 10), content("/a", 100)[..10]);
        assert_eq!(content("/a", 0).len(), 0);
    }
}
