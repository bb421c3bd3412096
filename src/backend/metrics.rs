//! Prometheus metrics of the backend's agents, in the text exposition format (0.0.4), served
//! over plain HTTP at `/metrics` on an address the operator chooses (`--metrics-listen`).
//! Every name starts with `hedge_`. Labels take values from bounded sets only (outcomes,
//! refusal kinds; devices up to [`MAX_DEVICE_LABELS`], the rest under `device="other"`), so a
//! fleet — or a board making up device ids — cannot blow up the time series.
//!
//! The endpoint is for the operator's monitoring network: it shows counts and latencies, never
//! a class or a score. Listen on loopback or a management interface, not where boards reach.

use crate::files::IoError;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Devices with their own label; beyond, counted under `device="other"`.
pub const MAX_DEVICE_LABELS: usize = 1000;

/// A histogram with fixed upper bounds (`le`).
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Seconds: 1 ms to 60 s.
pub const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Results per batch.
pub const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value, escaped as the format requires.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What a decryption agent exports.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    /// By outcome: recorded, duplicate, withheld, refused.
    pub results: BTreeMap<&'static str, u64>,
    /// Refusals by kind ([`super::decryptor::Refused::kind`]).
    pub refused: BTreeMap<&'static str, u64>,
    /// Results recorded per device (bounded, see [`MAX_DEVICE_LABELS`]).
    pub per_device: BTreeMap<String, u64>,
    /// From a message's arrival to its end-to-end acknowledgement going out.
    pub ack_latency: Histogram,
    /// One registry transaction (a batch's acceptance).
    pub registry_latency: Histogram,
    pub batch_size: Histogram,
    pub acks_sent: u64,
    /// Messages received and not yet handled.
    pub queue_depth: u64,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            results: ["recorded", "duplicate", "withheld", "refused"]
                .into_iter()
                .map(|k| (k, 0))
                .collect(),
            refused: BTreeMap::new(),
            per_device: BTreeMap::new(),
            ack_latency: Histogram::new(SECONDS),
            registry_latency: Histogram::new(SECONDS),
            batch_size: Histogram::new(SIZES),
            acks_sent: 0,
            queue_depth: 0,
        }
    }
}

impl AgentMetrics {
    /// A result recorded for `device`.
    pub fn recorded(&mut self, device: &str) {
        let known = self.per_device.contains_key(device);
        let key = if known || self.per_device.len() < MAX_DEVICE_LABELS {
            device
        } else {
            "other"
        };
        *self.per_device.entry(key.to_string()).or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "hedge_results_total",
            "Result messages handled, by outcome.",
            "counter",
        );
        for (k, v) in &self.results {
            let _ = writeln!(out, "hedge_results_total{{outcome=\"{k}\"}} {v}");
        }
        header(
            &mut out,
            "hedge_refused_total",
            "Result messages refused, by reason.",
            "counter",
        );
        for (k, v) in &self.refused {
            let _ = writeln!(out, "hedge_refused_total{{reason=\"{}\"}} {v}", label(k));
        }
        header(
            &mut out,
            "hedge_device_results_total",
            "Results recorded per device (the first 1000 devices; the rest as other).",
            "counter",
        );
        for (k, v) in &self.per_device {
            let _ = writeln!(
                out,
                "hedge_device_results_total{{device=\"{}\"}} {v}",
                label(k)
            );
        }
        self.ack_latency.render(
            &mut out,
            "hedge_ack_latency_seconds",
            "From a result's arrival to its end-to-end acknowledgement.",
        );
        self.registry_latency.render(
            &mut out,
            "hedge_registry_seconds",
            "One registry transaction accepting a batch of results.",
        );
        self.batch_size.render(
            &mut out,
            "hedge_batch_results",
            "Results accepted per registry transaction.",
        );
        header(
            &mut out,
            "hedge_acks_sent_total",
            "End-to-end acknowledgement messages sent.",
            "counter",
        );
        let _ = writeln!(out, "hedge_acks_sent_total {}", self.acks_sent);
        header(
            &mut out,
            "hedge_queue_depth",
            "Messages received from the broker and not yet handled.",
            "gauge",
        );
        let _ = writeln!(out, "hedge_queue_depth {}", self.queue_depth);
        out
    }
}

/// Serve `render()` at `GET /metrics` on `addr` from a thread of its own; the bound address
/// (`addr` may ask for port 0).
pub fn serve(
    addr: &str,
    render: impl Fn() -> String + Send + 'static,
) -> Result<SocketAddr, IoError> {
    let listener =
        TcpListener::bind(addr).map_err(|e| IoError::new(format!("--metrics-listen {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| IoError::new("metrics listener", e))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = answer(stream, &render) {
                            log::debug!("metrics request: {e}");
                        }
                    }
                    // Out of file descriptors, say: do not spin.
                    Err(e) => {
                        log::warn!("metrics listener: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map_err(|e| IoError::new("metrics thread", e))?;
    Ok(bound)
}

/// Shared metrics behind [`serve`].
pub fn serve_shared<T: Send + 'static>(
    addr: &str,
    shared: Arc<Mutex<T>>,
    render: fn(&T) -> String,
) -> Result<SocketAddr, IoError> {
    serve(addr, move || {
        render(&shared.lock().unwrap_or_else(|p| p.into_inner()))
    })
}

/// One HTTP/1.x request: read its head (bounded, with a timeout), answer, close.
fn answer(mut stream: TcpStream, render: &impl Fn() -> String) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    // One request at a time, so a client that trickles its head gets 5 s in all.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !head.windows(4).any(|w| w == b"\r\n\r\n")
        && head.len() < 8192
        && std::time::Instant::now() < deadline
    {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let (status, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => ("200 OK", render()),
        (Some(b"GET"), _) => ("404 Not Found", "only /metrics here\n".to_string()),
        _ => ("405 Method Not Allowed", "GET /metrics\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// Boards with their own series in the fleet's metrics; beyond, only the totals.
pub const MAX_BOARD_LABELS: usize = 10_000;

/// The fleet's health as `hedge fleet --metrics-listen` exports it: per board (online, last
/// seen, running bundle, queue and spool depth, inferences, rejected inputs, a device id two
/// boards share) and the totals.
pub fn render_fleet(
    health: &[super::registry::HealthRecord],
    twins: &std::collections::BTreeSet<String>,
    now_ms: u64,
) -> String {
    let mut out = String::new();
    let online = health.iter().filter(|h| h.online).count();
    header(
        &mut out,
        "hedge_boards",
        "Boards by their last status.",
        "gauge",
    );
    let _ = writeln!(out, "hedge_boards{{state=\"online\"}} {online}");
    let _ = writeln!(
        out,
        "hedge_boards{{state=\"offline\"}} {}",
        health.len() - online
    );
    let boards = &health[..health.len().min(MAX_BOARD_LABELS)];
    let metrics: Vec<serde_json::Value> = boards
        .iter()
        .map(|h| {
            h.metrics
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok())
                .unwrap_or_default()
        })
        .collect();
    let series = |out: &mut String,
                  name: &str,
                  help: &str,
                  kind: &str,
                  value: &dyn Fn(usize) -> Option<f64>| {
        header(out, name, help, kind);
        for (i, h) in boards.iter().enumerate() {
            if let Some(v) = value(i) {
                let _ = writeln!(out, "{name}{{device=\"{}\"}} {v}", label(&h.device));
            }
        }
    };
    series(
        &mut out,
        "hedge_board_online",
        "1 while the board's status is online (its last will says offline).",
        "gauge",
        &|i| Some(f64::from(u8::from(boards[i].online))),
    );
    series(
        &mut out,
        "hedge_board_last_seen_seconds",
        "Seconds since the board's last status or metrics message.",
        "gauge",
        &|i| {
            let seen = boards[i].status_ms.max(boards[i].metrics_ms.unwrap_or(0));
            Some(now_ms.saturating_sub(seen) as f64 / 1e3)
        },
    );
    let metrics = &metrics;
    let field = |key: &'static str| move |i: usize| metrics[i][key].as_f64();
    series(
        &mut out,
        "hedge_board_queue_depth",
        "Inputs waiting for inference on the board.",
        "gauge",
        &field("queue_depth"),
    );
    series(
        &mut out,
        "hedge_board_spool_depth",
        "Results in the board's spool, not yet acknowledged.",
        "gauge",
        &field("spool_depth"),
    );
    series(
        &mut out,
        "hedge_board_inferences_total",
        "Inferences the board made since it started.",
        "counter",
        &field("inferences"),
    );
    series(
        &mut out,
        "hedge_board_rejected_inputs_total",
        "Inputs the board rejected since it started.",
        "counter",
        &|i| {
            metrics[i]["rejected"]
                .as_object()
                .map(|o| o.values().filter_map(|v| v.as_f64()).sum())
        },
    );
    header(
        &mut out,
        "hedge_board_bundle_info",
        "The bundle the board says it runs.",
        "gauge",
    );
    for h in boards {
        if let Some(b) = &h.bundle {
            let _ = writeln!(
                out,
                "hedge_board_bundle_info{{device=\"{}\",bundle=\"{}\",epoch=\"{}\"}} 1",
                label(&h.device),
                label(b),
                h.epoch.unwrap_or(0)
            );
        }
    }
    header(
        &mut out,
        "hedge_board_shared_id",
        "1: statuses from two boards under this device id.",
        "gauge",
    );
    for d in twins.iter().take(MAX_BOARD_LABELS) {
        let _ = writeln!(out, "hedge_board_shared_id{{device=\"{}\"}} 1", label(d));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.7, 9.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// Every series docs/grafana-dashboard.json queries is one an exporter serves.
    #[test]
    fn the_dashboard_queries_what_is_exported() {
        let board = super::super::registry::HealthRecord {
            device: "b".into(),
            online: true,
            bundle: Some("x".into()),
            metrics: Some(r#"{"queue_depth":1,"spool_depth":2}"#.into()),
            ..Default::default()
        };
        let twins = ["b".to_string()].into_iter().collect();
        let exported = AgentMetrics::default().render() + &render_fleet(&[board], &twins, 0);
        let dashboard = include_str!("../../docs/grafana-dashboard.json");
        let mut names: Vec<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("hedge_"))
            .collect();
        names.sort();
        names.dedup();
        assert!(names.len() >= 8, "{names:?}");
        for name in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(
                exported.contains(&format!("# TYPE {family} ")),
                "{name} is not exported"
            );
        }
    }

    #[test]
    fn device_labels_are_bounded() {
        let mut m = AgentMetrics::default();
        for i in 0..MAX_DEVICE_LABELS + 5 {
            m.recorded(&format!("d{i}"));
        }
        m.recorded("d0");
        assert_eq!(m.per_device.len(), MAX_DEVICE_LABELS + 1);
        assert_eq!(m.per_device["other"], 5);
        assert_eq!(m.per_device["d0"], 2);
    }
}
