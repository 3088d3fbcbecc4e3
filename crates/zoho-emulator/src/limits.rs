//! Zoho's limits: 10 mints per refresh token per window (then `Access Denied`), and at most
//! 15 live access tokens per refresh token (a new one revokes the oldest); and the injected
//! [`Fault`]s.

use crate::accounts::{Decision, oauth_error};
use crate::state::*;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;
use std::collections::VecDeque;
use std::time::Duration;

pub(crate) const THROTTLE_DESCRIPTION: &str =
    "You have made too many requests continuously. Please try again after some time.";

pub(crate) fn mint(
    inner: &mut Inner,
    refresh_token: &str,
) -> Result<String, (&'static str, Option<&'static str>)> {
    let now = inner.now();
    let settings = inner.settings.clone();
    let window = i64::try_from(settings.mint_window_secs)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let lifetime_ms = i64::try_from(settings.token_lifetime_secs)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let access_token = random_token("1000.");
    let mut evicted = Vec::new();
    let label;
    {
        let Some(entry) = inner.refresh_tokens.get_mut(refresh_token) else {
            return Err(("invalid_code", None));
        };
        while entry.mints.front().is_some_and(|t| *t <= now - window) {
            entry.mints.pop_front();
        }
        if settings.mint_limit > 0 && entry.mints.len() >= settings.mint_limit as usize {
            return Err(("Access Denied", Some(THROTTLE_DESCRIPTION)));
        }
        entry.mints.push_back(now);
        entry.live.push_back(access_token.clone());
        label = entry.label.clone();
    }
    let scope = inner
        .refresh_tokens
        .get(refresh_token)
        .map(|e| e.scope.clone())
        .unwrap_or_default();
    inner.access_tokens.insert(
        access_token.clone(),
        AccessTokenEntry {
            refresh_token: refresh_token.to_owned(),
            scope,
            expires_at: now + lifetime_ms,
            revoked: false,
        },
    );
    // Enforce the live-token cap over tokens that are still live.
    if let Some(entry) = inner.refresh_tokens.get(refresh_token) {
        let live: Vec<String> = entry
            .live
            .iter()
            .filter(|t| {
                inner
                    .access_tokens
                    .get(*t)
                    .is_some_and(|a| !a.revoked && a.expires_at > now)
            })
            .cloned()
            .collect();
        let cap = settings.live_token_cap as usize;
        if cap > 0 && live.len() > cap {
            evicted.extend(live[..live.len() - cap].iter().cloned());
        }
        let keep: VecDeque<String> = live.into_iter().filter(|t| !evicted.contains(t)).collect();
        if let Some(e) = inner.refresh_tokens.get_mut(refresh_token) {
            e.live = keep;
        }
    }
    for t in &evicted {
        if let Some(a) = inner.access_tokens.get_mut(t) {
            a.revoked = true;
        }
        inner.stats.evicted_by_cap += 1;
    }
    if !label.is_empty() {
        *inner.stats.mints_by_label.entry(label).or_default() += 1;
    }
    Ok(access_token)
}

/// Applies the next injected fault, if any: `Err` with the answer to give instead of a token, or
/// `Ok(true)` when the token answer must use the legacy `expires_in_sec` form.
pub(crate) fn apply_fault(inner: &mut Inner, grant: &str) -> Result<bool, Box<Decision>> {
    let fault = inner
        .one_shot_faults
        .pop_front()
        .or_else(|| inner.settings.fault.clone());
    match fault {
        Some(Fault::Http500) => {
            inner.stats.faults_injected += 1;
            inner.count(grant, "http_500");
            Err(Box::new(Decision::Respond(
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"error": "internal"})),
                )
                    .into_response(),
            )))
        }
        Some(Fault::Hang { millis }) => {
            inner.stats.faults_injected += 1;
            inner.count(grant, "hang");
            Err(Box::new(Decision::Hang(Duration::from_millis(millis))))
        }
        Some(Fault::Reset) => {
            inner.stats.faults_injected += 1;
            inner.count(grant, "reset");
            Err(Box::new(Decision::Reset))
        }
        Some(Fault::ErrorWith200 { error, description }) => {
            inner.stats.faults_injected += 1;
            inner.count(grant, &error);
            Err(Box::new(Decision::Respond(oauth_error(
                &error,
                description.as_deref(),
            ))))
        }
        Some(Fault::LegacyExpiry) => {
            inner.stats.faults_injected += 1;
            Ok(true)
        }
        None => Ok(false),
    }
}
