//! Lists users from the emulator's sample CRM API through the `ZohoAuth` middleware: the token
//! goes into the header, the relative URL goes to the token's `api_domain`, and a revoked token
//! is replaced once.
//!
//! `cargo run -p catalyst-connectors --example list_users --features middleware`

use catalyst_connectors::middleware::{ZohoAuth, api_url};
use catalyst_connectors::{Connection, ConnectorConfig, ExposeSecret, MemoryStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let zoho = zoho_emulator::start().await?;
    zoho.add_client("1000.EXAMPLE", "example-secret");
    let refresh_token = zoho.add_refresh_token("1000.EXAMPLE", "ZohoCRM.users.READ");

    let connection = Connection::builder()
        .store(MemoryStore::new())
        .connector(
            ConnectorConfig::builder("crm")
                .client_id("1000.EXAMPLE")
                .client_secret("example-secret")
                .token_url(zoho.token_url())
                .refresh_token(refresh_token)
                .build()?,
        )
        .build()?;
    let crm = connection.connector("crm")?;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(ZohoAuth::new(crm.clone()))
        .build();

    let users: serde_json::Value = client
        .get(api_url("/crm/v8/users"))
        .send()
        .await?
        .json()
        .await?;
    for user in users["users"].as_array().into_iter().flatten() {
        println!(
            "{}  <{}>",
            user["full_name"].as_str().unwrap_or("?"),
            user["email"].as_str().unwrap_or("?")
        );
    }

    // Zoho revokes the token (say, the 16th live token pushed it out): the next call still works.
    zoho.revoke(crm.access_token().await?.expose_secret());
    let again = client.get(api_url("/crm/v8/users")).send().await?;
    println!(
        "after revocation: HTTP {} ({} token requests in all)",
        again.status(),
        zoho.stats().token_requests
    );
    Ok(())
}
