//! `tailscope prices check`: is the price table still true for what the fleet calls?
//!
//! It reports the table's sources and dates, the models in stored spans that no entry prices (with their spans,
//! tokens and an estimate of the spend they hide) and the entries older than `--max-age`, and fails (exit code 1)
//! when there are either, so that it can run from CI or cron.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::NaiveDate;
use collector::cost::Pricer;
use collector::cost::pricer::file_origin;
use collector::cost::prices::DEFAULT_MODELS_JSON;
use query::format::Format;
use serde_json::Value;
use tailscope_core::config::Config;
use tailscope_core::rules::UNPRICED;

use super::CmdResult;
use super::query::{Backend, local, remote};

/// Flags of `tailscope prices`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: PricesCommand,
}

/// What `tailscope prices` does.
#[derive(Debug, clap::Subcommand)]
pub enum PricesCommand {
    /// Report the price table's sources and dates, unpriced models in stored spans and stale entries; exit 1 when
    /// any model is unpriced or any entry is stale.
    Check(CheckArgs),
}

/// Flags of `tailscope prices check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Read the Parquet files under this data dir (default: the config's data_dir).
    #[arg(long, conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,
    /// Ask a running collector instead, e.g. http://127.0.0.1:4319 (sees unflushed spans too).
    #[arg(long, env = "TAILSCOPE_SERVER")]
    pub server: Option<String>,
    /// The tailscope config file: its data_dir and [pricing] (price files and inline entries).
    #[arg(long, short, env = "TAILSCOPE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Entries dated longer ago than this are stale (list prices move every few months).
    #[arg(long, default_value = "180d", value_parser = humantime::parse_duration)]
    pub max_age: Duration,
    #[command(flatten)]
    pub auth: super::ServerAuth,
}

/// Runs `tailscope prices`.
pub async fn run(args: Args) -> CmdResult {
    match args.command {
        PricesCommand::Check(args) => check(args).await,
    }
}

/// One price entry's citation.
struct Entry {
    origin: String,
    key: String,
    source: Option<String>,
    as_of: Option<NaiveDate>,
    /// The provider no longer sells the model (LiteLLM dropped it): its last list price is final, so its date is
    /// not a reason to refresh it.
    retired: bool,
}

async fn check(args: CheckArgs) -> CmdResult {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    // The same validation `serve` applies: a table that would not load is reported as such, not half read.
    Pricer::from_config(&config.pricing)?;
    let entries = entries(&config)?;
    let today = chrono::Utc::now().date_naive();
    let max_age_days = i64::try_from(args.max_age.as_secs() / 86_400).unwrap_or(i64::MAX);

    println!("Price table ({} entries):", entries.len());
    let mut sources: BTreeMap<(&str, &str), (usize, Option<NaiveDate>)> = BTreeMap::new();
    for e in &entries {
        let s = sources.entry((&e.origin, e.source.as_deref().unwrap_or("(no source)"))).or_default();
        s.0 += 1;
        s.1 = match (s.1, e.as_of) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    for ((origin, source), (n, oldest)) in &sources {
        let date = oldest.map_or("undated".to_string(), |d| format!("oldest {}", d.format("%Y-%m")));
        println!("  {origin:<10} {n:>4} entries  {date:<14} {}", printable(source));
    }
    let stale: Vec<&Entry> = entries
        .iter()
        .filter(|e| !e.retired && e.as_of.is_some_and(|d| (today - d).num_days() > max_age_days))
        .collect();
    let retired = entries.iter().filter(|e| e.retired).count();
    if retired > 0 {
        println!("\nRetired models (no longer sold; their last list price is final, never stale): {retired}");
    }
    println!("\nStale entries (dated more than {} ago): {}", humantime::format_duration(args.max_age), stale.len());
    for e in &stale {
        let date = e.as_of.map(|d| d.format("%Y-%m").to_string()).unwrap_or_default();
        println!("  {}:{}  as of {date}", e.origin, printable(&e.key));
    }

    let backend = match &args.server {
        Some(server) => remote(server, &args.auth)?,
        None => local(args.data_dir.clone(), config).await?,
    };
    let unpriced = rows(&backend, &unpriced_sql()).await?;
    let paid = rows(&backend, PAID_SQL).await?;
    // What the fleet pays per token at each provider, from its priced spans.
    let rate: BTreeMap<String, f64> = paid
        .iter()
        .filter_map(|r| {
            let tokens = r["tokens"].as_f64().filter(|t| *t > 0.0)?;
            Some((r["provider"].as_str().unwrap_or("").to_string(), r["cost"].as_f64()? / tokens))
        })
        .collect();
    println!("\nUnpriced models in stored spans: {}", unpriced.len());
    if !unpriced.is_empty() {
        println!("  {:<20} {:<40} {:>10} {:>14} {:>16}", "provider", "model", "spans", "tokens", "spend at risk");
    }
    for r in &unpriced {
        let provider = r["provider"].as_str().unwrap_or("");
        let tokens = r["tokens"].as_f64().unwrap_or(0.0);
        let at_risk = rate.get(provider).map_or("unknown".to_string(), |rate| format!("~${:.4}", tokens * rate));
        println!(
            "  {:<20} {:<40} {:>10} {:>14} {:>16}",
            printable(provider),
            printable(r["model"].as_str().unwrap_or("")),
            r["spans"].as_i64().unwrap_or(0),
            tokens as i64,
            at_risk
        );
    }
    if !unpriced.is_empty() {
        println!(
            "  spend at risk: the tokens at the average per-token cost of the same provider's priced spans; \
             unknown when the provider has none"
        );
    }
    if unpriced.is_empty() && stale.is_empty() {
        return Ok(());
    }
    Err(format!("{} unpriced model(s), {} stale price entries", unpriced.len(), stale.len()).into())
}

/// Unpriced spans by provider and model (the response's name first: it is what the pricer tried first).
fn unpriced_sql() -> String {
    format!(
        "SELECT gen_ai_provider AS provider, coalesce(response_model, request_model) AS model, count(*) AS spans, \
         sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) AS tokens FROM spans \
         WHERE price_source = '{UNPRICED}' GROUP BY gen_ai_provider, coalesce(response_model, request_model) \
         ORDER BY spans DESC, model LIMIT 1000"
    )
}

/// Token cost and tokens of priced spans per provider: the reference for the spend an unpriced model hides.
const PAID_SQL: &str = "SELECT gen_ai_provider AS provider, sum(token_cost_usd) AS cost, \
     sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) AS tokens FROM spans \
     WHERE token_cost_usd IS NOT NULL GROUP BY gen_ai_provider";

/// A statement's rows as JSON objects.
async fn rows(backend: &Backend, sql: &str) -> Result<Vec<Value>, Box<dyn std::error::Error + Send + Sync>> {
    let mut out = Vec::new();
    backend.run(sql, Format::Json, &mut out).await?;
    Ok(serde_json::from_slice(&out)?)
}

/// Every entry of the table in use, in the order the pricer merges them, with its citation.
fn entries(config: &Config) -> Result<Vec<Entry>, Box<dyn std::error::Error + Send + Sync>> {
    let mut out = Vec::new();
    let mut add = |origin: &str, text: &str| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let Value::Object(map) = serde_json::from_str::<Value>(text)? else { return Ok(()) };
        for (key, entry) in map.iter().filter(|(k, _)| *k != "sample_spec") {
            out.push(Entry {
                origin: origin.to_string(),
                key: key.clone(),
                source: entry.get("source").and_then(Value::as_str).map(str::to_string),
                as_of: entry.get("as_of").and_then(Value::as_str).and_then(as_of_date),
                retired: entry.get("retired").is_some_and(|r| !r.is_null()),
            });
        }
        Ok(())
    };
    if !config.pricing.replace_default_models {
        add("default", DEFAULT_MODELS_JSON)?;
    }
    for file in &config.pricing.model_files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        add(&file_origin(file), &text)?;
    }
    for key in config.pricing.models.keys() {
        out.push(Entry { origin: "config".into(), key: key.clone(), source: None, as_of: None, retired: false });
    }
    Ok(out)
}

/// `list price as of October 2025`, `2025-10` or `2025-10-01`: the first day of the month named.
fn as_of_date(text: &str) -> Option<NaiveDate> {
    let text = text.trim();
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some(d);
    }
    if let Ok(d) = NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d") {
        return Some(d);
    }
    let mut words = text.rsplit(' ');
    let year = words.next()?;
    let month = words.next()?;
    NaiveDate::parse_from_str(&format!("1 {month} {year}"), "%d %B %Y").ok()
}

/// A name from stored spans or a price file, shown without the control characters a hostile client may put in it.
fn printable(s: &str) -> String {
    s.chars().take(200).map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse() {
        let oct = NaiveDate::from_ymd_opt(2025, 10, 1);
        assert_eq!(as_of_date("list price as of October 2025"), oct);
        assert_eq!(as_of_date("2025-10"), oct);
        assert_eq!(as_of_date("2025-10-01"), oct);
        assert_eq!(as_of_date("recently"), None);
        assert_eq!(as_of_date(""), None);
    }
}
