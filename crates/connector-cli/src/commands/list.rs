//! `connector list`: the configured connectors.

use super::{Context, print_json};
use crate::exit::Failure;
use crate::output;
use catalyst_connectors::Connection;
use serde_json::json;

pub async fn run(ctx: &Context, json: bool) -> Result<(), Failure> {
    show(ctx.connection()?, json).await
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
