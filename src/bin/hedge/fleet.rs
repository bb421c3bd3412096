use anyhow::{Context, Result};
use hedge::backend::fleet;
use hedge::backend::metrics;
use hedge::backend::registry::Registry;
use hedge::transport::message::now_ms;
use hedge::transport::mqtt::MqttArgs;
use hedge::transport::mqtt::MqttConfig;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Take the boards' status and metrics from BROKER (HOST:PORT) first; without it, show
    /// what the registry holds.
    #[arg(long, value_name = "BROKER")]
    broker: Option<String>,
    /// Seconds to listen (retained statuses arrive at once; metrics at the boards' interval).
    #[arg(long, default_value_t = 3)]
    listen: u64,
    #[command(flatten)]
    mqtt: MqttArgs,
    /// Keep listening (until SIGTERM) and serve the boards' health as Prometheus metrics at
    /// http://ADDR/metrics (online, last seen, bundle, queue, spool; a device id two boards
    /// share).
    #[arg(long, value_name = "ADDR", requires = "broker")]
    metrics_listen: Option<String>,
    /// The key directory whose registry to use (or --registry).
    #[arg(long)]
    pub keys: Option<std::path::PathBuf>,
}

pub fn run(a: Args, registry: &std::path::Path) -> Result<()> {
    let registry = Registry::open(registry)?;
    if let (Some(addr), Some(broker)) = (&a.metrics_listen, &a.broker) {
        let config = a.mqtt.config_for(broker).context("--broker")?;
        return export(addr, &config, &registry);
    }
    if let Some(broker) = &a.broker {
        let config = a.mqtt.config_for(broker).context("--broker")?;
        let heard = fleet::listen(&config, &registry, Duration::from_secs(a.listen))?;
        log::info!(
            "{} status and {} metrics message(s), {} ignored",
            heard.statuses,
            heard.metrics,
            heard.ignored
        );
    }
    let now = hedge::transport::message::now_ms();
    let enrolled: Vec<String> = registry.devices()?.into_iter().map(|d| d.id).collect();
    let health = registry.health()?;
    println!(
        "{:<16} {:<10} {:>10} {:<18} {:>5} {:>10} {:>6} {:>6} {:>8}",
        "device",
        "state",
        "seen s ago",
        "bundle",
        "epoch",
        "inferences",
        "queue",
        "spool",
        "rejected"
    );
    for h in &health {
        let m: serde_json::Value = h
            .metrics
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default();
        let rejected: u64 = m["rejected"]
            .as_object()
            .map(|o| o.values().filter_map(|v| v.as_u64()).sum())
            .unwrap_or(0);
        let seen = h.status_ms.max(h.metrics_ms.unwrap_or(0));
        let field = |k: &str| m[k].as_u64().map(|v| v.to_string()).unwrap_or("-".into());
        println!(
            "{:<16} {:<10} {:>10} {:<18} {:>5} {:>10} {:>6} {:>6} {:>8}",
            h.device,
            if h.online { "online" } else { "offline" },
            now.saturating_sub(seen) / 1000,
            h.bundle.as_deref().unwrap_or("-"),
            h.epoch.map(|e| e.to_string()).unwrap_or("-".into()),
            field("inferences"),
            field("queue_depth"),
            field("spool_depth"),
            rejected
        );
    }
    for device in enrolled
        .iter()
        .filter(|d| !health.iter().any(|h| &h.device == *d))
    {
        println!("{device:<16} {:<10}", "never seen");
    }
    Ok(())
}

/// Listen until SIGTERM/SIGINT, serving the fleet's health at `addr` (refreshed from the
/// registry at most once a second as messages come; "last seen" is computed per scrape).
fn export(addr: &str, config: &MqttConfig, registry: &Registry) -> Result<()> {
    let snapshot = Arc::new(Mutex::new((registry.health()?, BTreeSet::new())));
    let shared = snapshot.clone();
    let bound = metrics::serve(addr, move || {
        let guard = shared.lock().unwrap_or_else(|p| p.into_inner());
        metrics::render_fleet(&guard.0, &guard.1, now_ms())
    })?;
    log::info!("fleet metrics at http://{bound}/metrics");
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("signal handler")?;
    }
    let mut refreshed = Instant::now();
    let heard = fleet::watch(config, registry, &stop, |r, heard| {
        let twins_changed = snapshot
            .lock()
            .map(|g| g.1 != heard.twins.flagged)
            .unwrap_or(true);
        if refreshed.elapsed() >= Duration::from_secs(1) || twins_changed {
            let health = r.health()?;
            *snapshot.lock().unwrap_or_else(|p| p.into_inner()) =
                (health, heard.twins.flagged.clone());
            refreshed = Instant::now();
        }
        Ok(())
    })?;
    log::info!(
        "{} status and {} metrics message(s), {} ignored",
        heard.statuses,
        heard.metrics,
        heard.ignored
    );
    Ok(())
}
