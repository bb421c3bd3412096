use anyhow::{bail, Context, Result};
use hedge::backend::registry::Registry;
use std::path::Path;

#[derive(clap::Args)]
pub struct Args {
    /// The key directory whose registry to use (or --registry).
    #[arg(long, global = true)]
    pub keys: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Enrol a board: its id and the identity key `hedged --print-identity` printed on it.
    Add {
        id: String,
        /// The board's public identity key (64 hex digits).
        #[arg(long)]
        key: String,
        /// Put it in a group (`hedge deploy --group`).
        #[arg(long)]
        group: Option<String>,
    },
    /// Every enrolled board: its state, refused results (since last cleared and over its
    /// life), results withheld while quarantined, highest sequence, last result; then each key
    /// set's accepted and refused results (the query budget: docs/THREATS.md).
    List,
    /// Refuse a board's results from now on.
    Revoke { id: String },
    /// Release a quarantined board (after finding out why its results were refused).
    Clear { id: String },
}

fn parse_key(hex: &str) -> Result<[u8; 32]> {
    let hex = hex.trim();
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect();
    let key: [u8; 32] = bytes
        .and_then(|b| b.try_into().ok())
        .context("the key must be 64 hex digits (hedged --print-identity)")?;
    if ed25519_dalek::VerifyingKey::from_bytes(&key).is_err() {
        bail!("not an Ed25519 public key");
    }
    Ok(key)
}

pub fn run(command: Command, registry: &Path) -> Result<()> {
    let r = Registry::open(registry)?;
    match command {
        Command::Add { id, key, group } => {
            r.add_device(&id, &parse_key(&key)?)?;
            if let Some(g) = &group {
                r.set_group(&id, g)?;
            }
            println!(
                "enrolled {id}{}",
                group.map(|g| format!(" in group {g}")).unwrap_or_default()
            );
        }
        Command::List => {
            println!(
                "{:<20} {:<12} {:>8} {:>10} {:>10} {:>14} {:>8} {:>9}  identity key",
                "device",
                "state",
                "refused",
                "accepted",
                "highest",
                "last seen (ms)",
                "withheld",
                "refused*"
            );
            for d in r.devices()? {
                println!(
                    "{:<20} {:<12} {:>8} {:>10} {:>10} {:>14} {:>8} {:>9}  {}",
                    d.id,
                    format!("{:?}", d.state).to_lowercase(),
                    d.refused,
                    d.accepted,
                    d.high_water,
                    d.last_seen_ms,
                    r.withheld_count(&d.id)?,
                    d.refused_total,
                    hedge::hex::hex(&d.identity_key)
                );
            }
            println!("(refused*: over the device's life)");
            for u in r.key_set_use()? {
                println!(
                    "key set {} ({}-bit): {} accepted, {} refused",
                    u.id, u.security, u.accepted, u.refused
                );
            }
        }
        Command::Revoke { id } => {
            r.revoke(&id)?;
            println!("revoked {id}");
        }
        Command::Clear { id } => {
            r.clear(&id)?;
            println!("cleared {id}: its results are decrypted again");
        }
    }
    Ok(())
}
