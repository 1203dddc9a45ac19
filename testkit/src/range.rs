//! [`FileServer`]: a real HTTP/1.1 server (axum on hyper) on `127.0.0.1:0`
//! that serves the files of a directory the way static file servers do:
//! `Range: bytes=A-B` answered with 206 and `Content-Range`, a strong ETag
//! made of the file's size and modification time, `Last-Modified`, and
//! `If-Match` answered with 412 when the file changed. For the tests that
//! need a worse server it can ignore Range (always 200 with the whole file,
//! like Python's `http.server`), and for the benchmarks it can cap each
//! response's rate, as one host's link would.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::server::ServerThread;

/// Bytes per piece of a response body.
const PIECE: usize = 256 << 10;

#[derive(Debug)]
struct Settings {
    root: PathBuf,
    honour_range: AtomicBool,
    /// Bytes per second per response; 0 for no cap.
    rate: AtomicU64,
    /// Range requests answered.
    ranges: AtomicU64,
}

/// A running file server; stopped when dropped.
#[derive(Debug)]
pub struct FileServer {
    server: ServerThread,
    settings: Arc<Settings>,
}

impl FileServer {
    /// Serves the files under `root` on `127.0.0.1:0`, from a thread of its
    /// own.
    ///
    /// # Panics
    /// When no local port can be bound.
    pub fn start(root: &Path) -> FileServer {
        let settings = Arc::new(Settings {
            root: root.to_owned(),
            honour_range: AtomicBool::new(true),
            rate: AtomicU64::new(0),
            ranges: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(Arc::clone(&settings));
        FileServer {
            server: ServerThread::start(app),
            settings,
        }
    }

    /// `http://127.0.0.1:PORT/` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://{}/{}",
            self.server.addr(),
            path.trim_start_matches('/')
        )
    }

    /// From now on, answer Range requests with the whole file (200), as a
    /// server without Range support does.
    pub fn ignore_range(&self) {
        self.settings.honour_range.store(false, Ordering::Relaxed);
    }

    /// Caps every response at `bytes_per_second` (0: no cap).
    pub fn cap_rate(&self, bytes_per_second: u64) {
        self.settings
            .rate
            .store(bytes_per_second, Ordering::Relaxed);
    }

    /// Range requests answered with 206 so far.
    pub fn ranges_served(&self) -> u64 {
        self.settings.ranges.load(Ordering::Relaxed)
    }
}

fn status(code: StatusCode) -> Response {
    (code, code.canonical_reason().unwrap_or("")).into_response()
}

/// `bytes=A-B` or `bytes=A-` of a file of `len` bytes, as a half-open range.
fn parse_range(value: &str, len: u64) -> Option<std::ops::Range<u64>> {
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => len,
        end => end.parse::<u64>().ok()?.saturating_add(1).min(len),
    };
    (start < end).then_some(start..end)
}

async fn serve(State(settings): State<Arc<Settings>>, uri: Uri, headers: HeaderMap) -> Response {
    let relative = uri.path().trim_start_matches('/');
    if relative.split('/').any(|part| part == "..") {
        return status(StatusCode::FORBIDDEN);
    }
    let path = settings.root.join(relative);
    let Ok(meta) = std::fs::metadata(&path).filter_ok_file() else {
        return status(StatusCode::NOT_FOUND);
    };
    let len = meta.len();
    let etag = format!(
        "\"{:x}-{:x}\"",
        len,
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
    );
    let modified = meta
        .modified()
        .map(httpdate::fmt_http_date)
        .unwrap_or_default();
    if let Some(wanted) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
        && wanted != "*"
        && wanted != etag
    {
        return status(StatusCode::PRECONDITION_FAILED);
    }
    let requested = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| settings.honour_range.load(Ordering::Relaxed));
    let (code, range) = match requested {
        Some(value) => match parse_range(value, len) {
            Some(range) => (StatusCode::PARTIAL_CONTENT, range),
            None => return status(StatusCode::RANGE_NOT_SATISFIABLE),
        },
        None => (StatusCode::OK, 0..len),
    };
    if code == StatusCode::PARTIAL_CONTENT {
        settings.ranges.fetch_add(1, Ordering::Relaxed);
    }
    let rate = settings.rate.load(Ordering::Relaxed);
    let mut response = Response::new(body(path, range.clone(), rate));
    *response.status_mut() = code;
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(range.end - range.start),
    );
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, value);
    }
    if let Ok(value) = HeaderValue::from_str(&modified) {
        out.insert(header::LAST_MODIFIED, value);
    }
    if code == StatusCode::PARTIAL_CONTENT
        && let Ok(value) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{len}",
            range.start,
            range.end.saturating_sub(1)
        ))
    {
        out.insert(header::CONTENT_RANGE, value);
    }
    response.into_response()
}

trait FileMetadata {
    fn filter_ok_file(self) -> std::io::Result<std::fs::Metadata>;
}

impl FileMetadata for std::io::Result<std::fs::Metadata> {
    fn filter_ok_file(self) -> std::io::Result<std::fs::Metadata> {
        self.and_then(|meta| {
            if meta.is_file() {
                Ok(meta)
            } else {
                Err(std::io::Error::other("not a file"))
            }
        })
    }
}

/// The bytes of `range` of the file, read piece by piece (positioned
/// reads), paced to `rate` bytes per second when it is not 0.
fn body(path: PathBuf, range: std::ops::Range<u64>, rate: u64) -> Body {
    let started = Instant::now();
    let state = (path, range.start, range.start);
    let stream = futures_lite::stream::unfold(state, move |(path, at, first)| async move {
        if at >= range.end {
            return None;
        }
        if rate > 0 {
            let due = Duration::from_secs_f64((at - first) as f64 / rate as f64);
            tokio::time::sleep_until((started + due).into()).await;
        }
        let len = (range.end - at).min(PIECE as u64) as usize;
        let read_path = path.clone();
        let piece = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(&read_path)?;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, at)?;
            Ok::<_, std::io::Error>(Bytes::from(buf))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        // An error ends the body early: the client sees a short response.
        let next = if piece.is_ok() {
            at + len as u64
        } else {
            range.end
        };
        Some((piece, (path, next, first)))
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_parsed_as_servers_do() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Some(90..100));
        assert_eq!(parse_range("bytes=90-200", 100), Some(90..100));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("items=0-9", 100), None);
    }
}
