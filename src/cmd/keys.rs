//! `tailscope keys new`: makes an API key, prints it once and the config lines that accept it.

use tailscope_core::config::Scope;
use tailscope_core::projects::Project;

use super::CmdResult;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Make a new API key: prints the key (shown only this once) and the `[[auth.keys]]` lines to add to the
    /// config, which hold its hash, never the key.
    New(NewArgs),
}

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// Names the key in the config and logs (e.g. the team or service that uses it).
    #[arg(long)]
    pub name: String,
    /// What the key may do; repeat for several: ingest (send OTLP), query (SQL, live, alerts), admin (all).
    #[arg(long = "scope", required = true, value_parser = clap::value_parser!(Scope))]
    pub scopes: Vec<Scope>,
    /// The project (tenant) the key belongs to; repeat for several. An ingest key's rows go to the first (or to the
    /// one a request names in `x-tailscope-project`); a query key sees these projects' rows only. Default: `default`.
    #[arg(long = "project", value_parser = parse_project)]
    pub projects: Vec<Project>,
}

fn parse_project(name: &str) -> Result<Project, String> {
    Project::parse(name)
}

pub fn run(args: Args) -> CmdResult {
    let KeysCommand::New(new) = args.command;
    if new.name.trim().is_empty() || new.name.contains(['"', '\\', '\n']) {
        return Err("--name must be non-empty, without quotes, backslashes or line breaks".into());
    }
    let key = collector::auth::new_key();
    let mut scopes: Vec<&str> = new.scopes.iter().map(|s| s.name()).collect();
    scopes.dedup();
    let scopes = scopes.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    println!("API key (shown once; store it in your secret manager):\n\n  {key}\n");
    println!("Add to the tailscope config:\n");
    let mut projects: Vec<&str> = Vec::new();
    for p in &new.projects {
        if !projects.contains(&p.as_str()) {
            projects.push(p.as_str());
        }
    }
    if projects.is_empty() {
        projects.push(tailscope_core::projects::DEFAULT_PROJECT);
    }
    let projects = projects.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", ");
    println!(
        "[[auth.keys]]\nname = \"{}\"\nhash = \"{}\"\nscopes = [{scopes}]\nprojects = [{projects}]\n",
        new.name,
        collector::auth::key_hash(&key)
    );
    println!(
        "Clients send it as `Authorization: Bearer <key>`; OTLP exporters:\n  \
         OTEL_EXPORTER_OTLP_HEADERS=\"Authorization=Bearer {key}\""
    );
    if new.projects.len() > 1 {
        println!(
            "An ingest request goes to the key's first project, or to the one it names:\n  \
             OTEL_EXPORTER_OTLP_HEADERS=\"Authorization=Bearer {key},{}={}\"",
            tailscope_core::projects::PROJECT_HEADER,
            new.projects[1]
        );
    }
    Ok(())
}
