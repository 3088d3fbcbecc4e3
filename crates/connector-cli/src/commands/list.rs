//! `connector list`: the configured connectors.

use super::{Context, Tokens, print_json};
use crate::exit::Failure;
use crate::output;
use catalyst_connectors::Connection;
use serde_json::json;

/// List the configured connectors and where each one's refresh token is.
///
/// With CONNECTOR_AGENT set, the connectors the running agent serves and their state.
#[derive(clap::Args, Debug)]
#[command(after_help = super::with_examples(&["connector list", "connector list --json"]))]
pub struct Args {
    /// Print JSON, one object per connector.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(super) place: super::Place,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), Failure> {
    match ctx.tokens()? {
        Tokens::Agent(agent) => show_agent(agent.connectors().await?, args.json),
        Tokens::Stores(connection) => show(connection, args.json).await,
    }
}

/// The connectors a running agent serves (`GET /v1/connectors`).
fn show_agent(items: Vec<serde_json::Value>, json: bool) -> Result<(), Failure> {
    if json {
        print_json(&serde_json::Value::Array(items));
        return Ok(());
    }
    let mut rows = vec![vec!["NAME".to_owned(), "STATE (AGENT)".into()]];
    for item in &items {
        let text = |k: &str| item[k].as_str().unwrap_or("-").to_owned();
        rows.push(vec![text("name"), text("state")]);
    }
    print!("{}", output::table(&rows, output::stdout_colour()));
    Ok(())
}

async fn show(connection: Connection, json: bool) -> Result<(), Failure> {
    let mut rows = vec![vec![
        "NAME".to_owned(),
        "CLIENT ID".into(),
        "TOKEN URL".into(),
        "REFRESH TOKEN".into(),
    ]];
    let mut out = Vec::new();
    for name in connection.connector_names() {
        let connector = connection.connector(name)?;
        let config = connector.config();
        let refresh = if config.has_refresh_token() {
            "config"
        } else if connector.has_refresh_token().await {
            "store"
        } else {
            "none"
        };
        out.push(json!({
            "name": name,
            "client_id": config.client_id(),
            "refresh_url": config.refresh_url(),
            // Where the refresh token is: "config", "store", or null when there is none.
            "refresh_token": (refresh != "none").then_some(refresh),
        }));
        rows.push(vec![
            name.to_owned(),
            config.client_id().to_owned(),
            config.refresh_url().to_owned(),
            refresh.into(),
        ]);
    }
    if json {
        print_json(&serde_json::Value::Array(out));
    } else {
        print!("{}", output::table(&rows, output::stdout_colour()));
    }
    Ok(())
}
