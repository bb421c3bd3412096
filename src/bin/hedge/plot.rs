use anyhow::{Context, Result};
use hedge::report::eval::CaseReport;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// JSON-lines files written by `hedge eval --json`.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let mut all = Vec::new();
    for path in &a.reports {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            all.push(
                serde_json::from_str::<CaseReport>(line)
                    .with_context(|| format!("{}:{}", path.display(), i + 1))?,
            );
        }
    }
    hedge::report::plot::accuracy(&all, &a.out)?;
    println!("{} case(s) plotted to {}", all.len(), a.out.display());
    Ok(())
}
