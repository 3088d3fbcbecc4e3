//! Per-user connectors without Rust: `exchange --user`, the agent's consent, code and DELETE
//! routes, hints that name what exists, and CLI commands telling the agent at once.

use std::time::Duration;

mod agent_support;
mod common;

use agent_support::{curl, curl_post, output, stop};
use common::Env;

/// The status and body of `GET path`.
async fn get(env: &Env, path: &str) -> (String, serde_json::Value) {
    parse(
        output(curl(&env.socket(), &["X-Connector-Agent: 1"], path))
            .await
            .1,
    )
}

async fn post(env: &Env, path: &str, body: serde_json::Value) -> (String, serde_json::Value) {
    parse(
        output(curl_post(&env.socket(), path, &body.to_string()))
            .await
            .1,
    )
}

fn parse(out: String) -> (String, serde_json::Value) {
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    (
        status.to_owned(),
        serde_json::from_str(body).unwrap_or_default(),
    )
}

fn code(env: &Env) -> String {
    env.emulator
        .add_grant_code(common::CLIENT_ID, "ZohoCRM.users.READ", None)
}

/// The refresh token the emulator minted `body`'s access token with.
fn minted_with(env: &Env, body: &serde_json::Value) -> String {
    env.emulator
        .refresh_token_of(body["access_token"].as_str().unwrap_or_default())
        .expect("a token the emulator minted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_by_exchange_and_bob_by_the_agents_routes_each_get_their_own_token() {
    let env = Env::new().await;
    let agent = env.serve(&[]).await;
    let socket = env.socket();

    // Before anyone connected alice: 409 with a hint naming the route and the command.
    let (status, body) = get(&env, "/v1/connectors/crm/users/alice/token").await;
    assert_eq!(status, "409", "{body}");
    let hint = body["hint"].as_str().unwrap();
    assert!(
        hint.contains("POST /v1/connectors/crm/users/alice/consent")
            && hint.contains("connector authorize crm --user alice"),
        "{hint}"
    );

    // alice: `connector exchange crm --user alice` in another process.
    let out = env
        .run(&["exchange", "crm", "--user", "alice", "--code", &code(&env)])
        .await;
    assert!(out.status.success(), "{}", common::stderr(&out));

    // bob: a web app asks the agent for the consent URL, then posts the redirect's code.
    let (status, start) = post(
        &env,
        "/v1/connectors/crm/users/bob/consent",
        serde_json::json!({"scope": "ZohoCRM.users.READ", "redirect_uri": "https://app.example/cb"}),
    )
    .await;
    assert_eq!(status, "200", "{start}");
    let url = start["url"].as_str().unwrap();
    let state = start["state"].as_str().unwrap();
    assert!(
        url.contains("access_type=offline") && url.contains(state),
        "{url}"
    );
    // A state issued for bob does not connect carol.
    let (status, body) = post(
        &env,
        "/v1/connectors/crm/users/carol/code",
        serde_json::json!({"code": code(&env), "state": state, "redirect_uri": "https://app.example/cb"}),
    )
    .await;
    assert_eq!(status, "400", "{body}");
    assert_eq!(body["error"], "invalid_state");
    let start = post(
        &env,
        "/v1/connectors/crm/users/bob/consent",
        serde_json::json!({"scope": "ZohoCRM.users.READ", "redirect_uri": "https://app.example/cb"}),
    )
    .await
    .1;
    let (status, body) = post(
        &env,
        "/v1/connectors/crm/users/bob/code",
        serde_json::json!({"code": code(&env), "state": start["state"], "redirect_uri": "https://app.example/cb"}),
    )
    .await;
    assert_eq!(status, "200", "{body}");
    assert_eq!(body["connected"], true);

    // Each is served a token of their own refresh token; neither is the template's.
    let (status, alice) = get(&env, "/v1/connectors/crm/users/alice/token").await;
    assert_eq!(status, "200", "{alice}");
    let (status, bob) = get(&env, "/v1/connectors/crm/users/bob/token").await;
    assert_eq!(status, "200", "{bob}");
    let (alice_rt, bob_rt) = (minted_with(&env, &alice), minted_with(&env, &bob));
    assert_ne!(alice_rt, bob_rt);
    assert_ne!(alice_rt, env.refresh_token);
    assert_ne!(bob_rt, env.refresh_token);
    assert_eq!(
        env.emulator.refresh_token_of(
            get(&env, "/v1/connectors/crm/token").await.1["access_token"]
                .as_str()
                .unwrap()
        ),
        Some(env.refresh_token.clone())
    );

    // The CLI through the agent: alice's token.
    let socket_var = socket.to_str().unwrap();
    let out = env
        .run_with(
            &[("CONNECTOR_AGENT", socket_var)],
            &["token", "crm", "--user", "alice"],
        )
        .await;
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(common::stdout(&out).trim(), alice["access_token"]);

    // DELETE disconnects bob: revoked at Zoho, then 409 again.
    let mut delete = curl(
        &socket,
        &["X-Connector-Agent: 1"],
        "/v1/connectors/crm/users/bob",
    );
    delete.args(["-X", "DELETE"]);
    let (status, body) = parse(output(delete).await.1);
    assert_eq!(status, "200", "{body}");
    assert_eq!(body["revoked"], true);
    assert!(
        !env.emulator.is_live(bob["access_token"].as_str().unwrap()),
        "bob's tokens are still live at Zoho"
    );
    let (status, _) = get(&env, "/v1/connectors/crm/users/bob/token").await;
    assert_eq!(status, "409");
    stop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_tells_the_agent_at_once_and_its_hints_name_real_commands() {
    let env = Env::new().await;
    // An agent that looks at the store only hourly: what it serves at once, it was told.
    let agent = env.serve(&["--follow-every", "1h"]).await;
    let socket = env.socket();
    let socket_var = socket.to_str().unwrap();
    let (status, _) = get(&env, "/v1/connectors/crm/users/dave/token").await;
    assert_eq!(status, "409");
    let out = env
        .run_with(
            &[("CONNECTOR_AGENT", socket_var)],
            &["exchange", "crm", "--user", "dave", "--code", &code(&env)],
        )
        .await;
    assert!(out.status.success(), "{}", common::stderr(&out));
    let (status, body) = get(&env, "/v1/connectors/crm/users/dave/token").await;
    assert_eq!(status, "200", "{body}");

    let (status, _) = get(&env, "/v1/connectors/crm/token").await;
    assert_eq!(status, "200");
    let out = env
        .run_with(&[("CONNECTOR_AGENT", socket_var)], &["revoke", "crm"])
        .await;
    assert!(out.status.success(), "{}", common::stderr(&out));
    let (status, body) = get(&env, "/v1/connectors/crm/token").await;
    assert_eq!(
        status, "409",
        "the agent was not told of the revoke: {body}"
    );
    let hint = body["hint"].as_str().unwrap();
    assert!(hint.contains("connector authorize crm --scope"), "{hint}");

    // The CLI's own hint for a user's connector names `--user`, a flag that exists.
    let out = env
        .run(&["token", "crm", "--user", "erin", "--no-agent"])
        .await;
    assert_eq!(out.status.code(), Some(4), "{}", common::stderr(&out));
    let err = common::stderr(&out);
    assert!(err.contains("connector authorize crm --user erin"), "{err}");
    stop(agent);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
