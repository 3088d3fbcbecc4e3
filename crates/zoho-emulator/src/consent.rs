//! The consent page of the server-based flow (`GET /oauth/v2/auth`) and its Accept button
//! (`POST /oauth/v2/auth/approve`), which redirects with a grant code as Zoho does.

use crate::accounts::params;
use crate::state::*;
use axum::body::Bytes;
use axum::extract::{RawQuery, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub(crate) fn html(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "text/html; charset=utf-8")], body).into_response()
}

/// `GET /oauth/v2/auth`: the consent page of the server-based flow, with Accept and Deny.
pub(crate) async fn consent_page(
    AxumState(state): AxumState<Shared>,
    RawQuery(query): RawQuery,
) -> Response {
    let p = params(query, &[]);
    let get = |k: &str| p.get(k).cloned().unwrap_or_default();
    let client_id = get("client_id");
    if !lock(&state).clients.contains_key(&client_id) {
        return html(
            StatusCode::BAD_REQUEST,
            "<!doctype html><title>Invalid client</title><h1>Invalid OAuth client</h1>".into(),
        );
    }
    if get("response_type") != "code" || get("redirect_uri").is_empty() {
        return html(
            StatusCode::BAD_REQUEST,
            "<!doctype html><title>Invalid request</title><h1>response_type=code and redirect_uri are required</h1>".into(),
        );
    }
    let hidden = ["client_id", "redirect_uri", "scope", "state", "access_type"]
        .iter()
        .map(|k| {
            format!(
                r#"<input type="hidden" name="{k}" value="{}">"#,
                html_escape::encode_double_quoted_attribute(&get(k))
            )
        })
        .collect::<String>();
    html(
        StatusCode::OK,
        format!(
            r#"<!doctype html><html><head><meta charset="utf-8"><title>Zoho Accounts (emulator): consent</title>
<style>body{{font-family:sans-serif;max-width:34em;margin:3em auto}}button{{font-size:1.1em;padding:.4em 1.2em;margin-right:1em}}</style></head>
<body><h1>Zoho Accounts (emulator)</h1>
<p>The application <b>{client}</b> asks for access to:</p><ul>{scopes}</ul>
<form method="post" action="/oauth/v2/auth/approve">{hidden}
<button id="accept" type="submit" name="decision" value="accept">Accept</button>
<button id="deny" type="submit" name="decision" value="deny">Deny</button></form></body></html>"#,
            client = html_escape::encode_double_quoted_attribute(&client_id),
            scopes = get("scope")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| format!(
                    "<li>{}</li>",
                    html_escape::encode_double_quoted_attribute(s)
                ))
                .collect::<String>(),
        ),
    )
}

/// `POST /oauth/v2/auth/approve`: issues a grant code and redirects to the client, as Zoho does
/// (`code`, `location`, `accounts-server`, `state`).
pub(crate) async fn approve(AxumState(state): AxumState<Shared>, body: Bytes) -> Response {
    let p = params(None, &body);
    let get = |k: &str| p.get(k).cloned().unwrap_or_default();
    let redirect_uri = get("redirect_uri");
    let query = if get("decision") == "accept" {
        let mut inner = lock(&state);
        let code = inner.add_grant_code(&get("client_id"), &get("scope"), Some(&redirect_uri));
        let server = inner.base_url.clone();
        serde_urlencoded::to_string([
            ("code", code.as_str()),
            ("location", "us"),
            ("accounts-server", server.as_str()),
            ("state", get("state").as_str()),
        ])
    } else {
        serde_urlencoded::to_string([("error", "access_denied"), ("state", get("state").as_str())])
    }
    .unwrap_or_default();
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    (
        StatusCode::FOUND,
        [("location", format!("{redirect_uri}{sep}{query}"))],
    )
        .into_response()
}
