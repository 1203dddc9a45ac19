//! A worker's HTTP endpoints (`/metrics`, `/healthz`, `/readyz`) as the
//! tests read them: plain HTTP/1.1 GETs to 127.0.0.1 and bounded waits for
//! a status or for counters to reach a value.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use warren_testkit::eventually;

/// Tasks of sum jobs a worker finished and acknowledged.
pub const SUM_TASKS_DONE: &str = r#"warren_worker_tasks_total{kind="sum",outcome="ok"}"#;

/// A plain HTTP/1.1 GET: status code and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Polls `path` until it answers `status`, or fails after 20 s.
pub fn wait_for_status(port: u16, path: &str, status: u16) -> String {
    eventually(Duration::from_secs(20), || match http_get(port, path) {
        Some((got, body)) if got == status => Ok(body),
        other => Err(format!("{path} answered {other:?}, not {status}")),
    })
}

/// The `/metrics` page, empty if the worker does not answer.
fn metrics_page(port: u16) -> String {
    http_get(port, "/metrics").map(|r| r.1).unwrap_or_default()
}

/// The value of the metric line starting with `name ` on `page`.
fn value_on(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The value of the metric line starting with `name ` on `/metrics`.
pub fn metric(port: u16, name: &str) -> f64 {
    let page = metrics_page(port);
    value_on(&page, name).unwrap_or_else(|| panic!("/metrics has no {name}:\n{page}"))
}

/// Polls `/metrics` until the metric `name` is at least `least`, or fails
/// after `timeout` showing the page; returns the value seen.
pub fn wait_for_metric_at_least(port: u16, name: &str, least: f64, timeout: Duration) -> f64 {
    eventually(timeout, || {
        let page = metrics_page(port);
        match value_on(&page, name) {
            Some(value) if value >= least => Ok(value),
            _ => Err(format!(
                "/metrics has no {name} of {least} or more:\n{page}"
            )),
        }
    })
}

/// Polls `/metrics` until each of `lines` is a line of it, or fails after
/// 20 s showing the page. (A worker counts a task just after acking it, so
/// the producer may have its answer a moment before the counters move.)
pub fn wait_for_metrics(port: u16, lines: &[&str]) {
    eventually(Duration::from_secs(20), || {
        let page = metrics_page(port);
        let missing: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|wanted| !page.lines().any(|line| line == *wanted))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("/metrics lacks {missing:?}:\n{page}"))
        }
    });
}
