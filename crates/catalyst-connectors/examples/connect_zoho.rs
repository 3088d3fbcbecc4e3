//! "Connect your Zoho account": an axum web app where each user connects their own Zoho CRM
//! account, against the offline emulator.
//!
//! `cargo run -p catalyst-connectors --example connect_zoho --features middleware`
//!
//! Then open the printed URL, e.g. http://127.0.0.1:3000/?user=alice, press "Connect", accept on
//! the (emulated) Zoho consent page, and see that user's CRM users listed with their own token.
//! `--self-test` walks the loop for two users with an HTTP client instead of a browser.

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use catalyst_connectors::middleware::{ZohoAuth, api_url};
use catalyst_connectors::users::{ConsentFlow, StateKey};
use catalyst_connectors::{Connection, Connector, ConnectorConfig, GrantCode, MemoryStore};
use std::collections::HashMap;
use std::sync::Arc;

struct App {
    crm: Connector,
    flow: ConsentFlow,
}

type Params = Query<HashMap<String, String>>;

async fn home(State(app): State<Arc<App>>, Query(q): Params) -> Html<String> {
    let user = q.get("user").cloned().unwrap_or_else(|| "alice".into());
    let connected = match app.crm.for_user(&user) {
        Ok(c) => c.has_refresh_token().await,
        Err(_) => false,
    };
    let u = html_escape::encode_double_quoted_attribute(&user);
    Html(if connected {
        format!(
            "<h1>Hello {u}</h1><p>Your Zoho account is connected.</p><p><a href=\"/users?user={u}\">List your CRM users</a> · <a href=\"/disconnect?user={u}\">Disconnect</a></p>"
        )
    } else {
        format!(
            "<h1>Hello {u}</h1><p><a id=\"connect\" href=\"/connect?user={u}\">Connect your Zoho account</a></p>"
        )
    })
}

async fn connect(State(app): State<Arc<App>>, Query(q): Params) -> Response {
    let user = q.get("user").cloned().unwrap_or_default();
    match app.flow.start(&user, &["ZohoCRM.users.READ"]) {
        Ok(start) => Redirect::to(&start.url).into_response(),
        Err(e) => Html(format!(
            "<p>Cannot connect: {}</p>",
            html_escape::encode_double_quoted_attribute(&e.to_string())
        ))
        .into_response(),
    }
}

async fn callback(State(app): State<Arc<App>>, Query(q): Params) -> Response {
    let (Some(code), Some(state)) = (q.get("code"), q.get("state")) else {
        return Html("<p>Not connected (no code).</p>".to_owned()).into_response();
    };
    match app
        .flow
        .complete(
            state,
            &GrantCode::new(code.clone()),
            q.get("accounts-server").map(String::as_str),
        )
        .await
    {
        Ok((user, _)) => Redirect::to(&format!("/?user={user}")).into_response(),
        Err(e) => Html(format!(
            "<p>Not connected: {}</p>",
            html_escape::encode_double_quoted_attribute(&e.to_string())
        ))
        .into_response(),
    }
}

async fn users(State(app): State<Arc<App>>, Query(q): Params) -> Response {
    let user = q.get("user").cloned().unwrap_or_default();
    let connector = match app.crm.for_user(&user) {
        Ok(c) => c,
        Err(e) => {
            return Html(html_escape::encode_double_quoted_attribute(&e.to_string()).into_owned())
                .into_response();
        }
    };
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(ZohoAuth::new(connector))
        .build();
    match client.get(api_url("/crm/v8/users")).send().await {
        Ok(r) => Html(format!(
            "<pre>{}</pre>",
            html_escape::encode_double_quoted_attribute(&r.text().await.unwrap_or_default())
        ))
        .into_response(),
        Err(e) => Html(format!(
            "<p>{}</p>",
            html_escape::encode_double_quoted_attribute(&e.to_string())
        ))
        .into_response(),
    }
}

async fn disconnect(State(app): State<Arc<App>>, Query(q): Params) -> Response {
    let user = q.get("user").cloned().unwrap_or_default();
    match app.flow.disconnect(&user).await {
        Ok(()) => Redirect::to(&format!("/?user={user}")).into_response(),
        Err(e) => Html(html_escape::encode_double_quoted_attribute(&e.to_string()).into_owned())
            .into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let zoho = zoho_emulator::start().await?;
    zoho.add_client("1000.WEBAPP", "webapp-secret");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let connection = Connection::builder()
        .store(MemoryStore::new())
        .connector(
            ConnectorConfig::builder("crm")
                .client_id("1000.WEBAPP")
                .client_secret("webapp-secret")
                .token_url(zoho.token_url())
                .build()?,
        )
        .build()?;
    let crm = connection.connector("crm")?;
    let flow = ConsentFlow::new(
        crm.clone(),
        format!("{base}/callback"),
        StateKey::generate(),
    );
    let app = Arc::new(App { crm, flow });
    let router = axum::Router::new()
        .route("/", get(home))
        .route("/connect", get(connect))
        .route("/callback", get(callback))
        .route("/users", get(users))
        .route("/disconnect", get(disconnect))
        .with_state(app);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    if std::env::args().any(|a| a == "--self-test") {
        // What a browser would do, for two users.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        for user in ["alice", "bob"] {
            let to_consent = http
                .get(format!("{base}/connect?user={user}"))
                .send()
                .await?;
            let consent = url::Url::parse(to_consent.headers()["location"].to_str()?)?;
            let q: HashMap<String, String> = consent.query_pairs().into_owned().collect();
            let approved = http
                .post(format!("{}/oauth/v2/auth/approve", zoho.url()))
                .form(&[
                    ("client_id", &q["client_id"]),
                    ("redirect_uri", &q["redirect_uri"]),
                    ("scope", &q["scope"]),
                    ("state", &q["state"]),
                    ("decision", &"accept".to_owned()),
                ])
                .send()
                .await?;
            let callback = approved.headers()["location"].to_str()?.to_owned();
            http.get(&callback).send().await?;
            let listed = http
                .get(format!("{base}/users?user={user}"))
                .send()
                .await?
                .text()
                .await?;
            println!(
                "{user}: {}",
                if listed.contains("Patricia Boyle") {
                    "connected, CRM users listed"
                } else {
                    "FAILED"
                }
            );
        }
        println!("token requests at Zoho: {:?}", zoho.stats().by_grant);
        server.abort();
        return Ok(());
    }
    println!("Open {base}/?user=alice (Ctrl-C to stop)");
    server.await??;
    Ok(())
}
