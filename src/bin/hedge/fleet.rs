use anyhow::{Context, Result};
use hedge::backend::fleet;
use hedge::backend::registry::Registry;
use hedge::transport::mqtt::MqttArgs;
use std::time::Duration;

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
    /// The key directory whose registry to use (or --registry).
    #[arg(long)]
    pub keys: Option<std::path::PathBuf>,
}

pub fn run(a: Args, registry: &std::path::Path) -> Result<()> {
    let registry = Registry::open(registry)?;
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
