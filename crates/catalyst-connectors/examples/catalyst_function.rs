//! A Catalyst-style function in Rust: an axum app behind [`CatalystLayer`], which reads the
//! project's credentials from each request's `x-zc-*` headers (as Catalyst's gateway sends them)
//! and gives the handler connectors whose tokens live in that project's Catalyst Cache — shared
//! with the project's Node and Python functions.
//!
//! Runs offline against the emulator (Zoho Accounts, Catalyst Cache and a sample CRM API):
//! `cargo run -p catalyst-connectors --example catalyst_function --features catalyst`.

use axum::Router;
use axum::extract::Extension;
use axum::http::StatusCode;
use axum::routing::get;
use catalyst_connectors::catalyst_request::{CatalystApp, CatalystLayer};
use serde_json::json;

const CLIENT_ID: &str = "1000.FUNCTION";
const CLIENT_SECRET: &str = "function-secret";
const PROJECT: &str = "4000000001234";

/// The function: list CRM users with the `crm` connector's token.
async fn list_users(
    Extension(app): Extension<CatalystApp>,
) -> Result<String, (StatusCode, String)> {
    let fail = |e: catalyst_connectors::Error| (StatusCode::BAD_GATEWAY, e.to_string());
    let token = app
        .connector("crm")
        .map_err(fail)?
        .access_token()
        .await
        .map_err(fail)?;
    let url = format!("{}/crm/v8/users", token.api_domain().unwrap_or_default());
    let users = reqwest::Client::new()
        .get(url)
        .header("Authorization", token.authorization_header())
        .send()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?
        .text()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(format!(
        "project {} ({}): {users}",
        app.project_id(),
        app.environment()
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let zoho = zoho_emulator::start().await?;
    zoho.add_client(CLIENT_ID, CLIENT_SECRET);
    let crm_refresh_token = zoho.add_refresh_token(CLIENT_ID, "ZohoCRM.users.READ");
    // What Catalyst's gateway would pass as the admin token: one with the cache scopes.
    let admin_refresh_token = zoho.add_refresh_token(
        CLIENT_ID,
        "ZohoCatalyst.cache.READ,ZohoCatalyst.cache.CREATE,ZohoCatalyst.cache.DELETE",
    );
    let admin: serde_json::Value = reqwest::Client::new()
        .post(zoho.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("refresh_token", admin_refresh_token.as_str()),
        ])
        .send()
        .await?
        .json()
        .await?;
    let admin_token = admin["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let layer = CatalystLayer::new(json!({"crm": {
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "auth_url": zoho.token_url(), "refresh_url": zoho.token_url(),
        "refresh_token": crm_refresh_token,
    }}))
    .origin(zoho.url());
    let app = Router::new().route("/users", get(list_users)).layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/users", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let http = reqwest::Client::new();
    for _ in 0..3 {
        let answer = http
            .get(&url)
            .header("x-zc-projectid", PROJECT)
            .header("x-zc-project-key", "function-demo")
            .header("x-zc-environment", "Production")
            .header("x-zc-admin-cred-type", "token")
            .header("x-zc-admin-cred-token", &admin_token)
            .send()
            .await?;
        println!("{} {}", answer.status(), answer.text().await?);
    }
    let bare = http.get(&url).send().await?;
    println!(
        "without the x-zc-* headers: {} {}",
        bare.status(),
        bare.text().await?
    );
    println!(
        "CRM token requests: {} (the token lives in the project's Production cache)",
        zoho.stats().by_grant["refresh_token"]["ok"] - 1
    );
    Ok(())
}
