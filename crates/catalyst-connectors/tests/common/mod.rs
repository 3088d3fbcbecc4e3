//! Shared set-up for the integration tests: an emulator with one client and refresh token, and a
//! connection to it on a manual clock.
#![allow(dead_code)]

use catalyst_connectors::{Connection, ConnectionBuilder, Error, ManualClock, MemoryStore};
use serde_json::json;
use std::sync::Arc;
use zoho_emulator::Emulator;

pub const CLIENT_ID: &str = "1000.TESTCLIENT";
pub const CLIENT_SECRET: &str = "client-secret-value-7f3a";

/// A builder that touches neither the environment nor the user's default store.
pub fn hermetic() -> ConnectionBuilder {
    Connection::builder().ignore_env().store(MemoryStore::new())
}

/// A builder that ignores the environment; the test sets the store.
pub fn hermetic_without_store() -> ConnectionBuilder {
    Connection::builder().ignore_env()
}

/// `Connection::from_json`, hermetic.
pub fn from_json(v: &serde_json::Value) -> Result<Connection, Error> {
    hermetic().json(v.clone()).build()
}

pub struct Setup {
    pub emulator: Emulator,
    pub refresh_token: String,
    pub clock: ManualClock,
}

impl Setup {
    pub async fn new() -> Self {
        let emulator = zoho_emulator::start().await.expect("start emulator");
        emulator.add_client(CLIENT_ID, CLIENT_SECRET);
        let refresh_token = emulator.add_refresh_token(CLIENT_ID, "ZohoCRM.users.READ");
        Self {
            emulator,
            refresh_token,
            clock: ManualClock::starting_now(),
        }
    }

    /// The SDK-shaped config of connector `crm`.
    pub fn config(&self) -> serde_json::Value {
        json!({
            "crm": {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "auth_url": self.emulator.token_url(),
                "refresh_url": self.emulator.token_url(),
                "refresh_token": self.refresh_token,
            }
        })
    }

    pub fn builder(&self) -> ConnectionBuilder {
        Connection::builder()
            .ignore_env()
            .store(MemoryStore::with_clock(Arc::new(self.clock.clone())))
            .json(self.config())
            .clock(self.clock.clone())
    }

    /// Like `builder()` without the config.
    pub fn bare_builder(&self) -> ConnectionBuilder {
        Connection::builder()
            .ignore_env()
            .store(MemoryStore::with_clock(Arc::new(self.clock.clone())))
            .clock(self.clock.clone())
    }

    pub fn connection(&self) -> Connection {
        self.builder().build().expect("valid config")
    }

    /// Moves both the connector's clock and the emulator's.
    pub fn advance(&self, by: std::time::Duration) {
        self.clock.advance(by);
        self.emulator.advance(by);
    }

    pub fn token_requests(&self) -> u64 {
        self.emulator.stats().token_requests
    }
}

/// Waits (real time, briefly) until the connector has no refresh running.
pub async fn settle(connector: &catalyst_connectors::Connector) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while connector.is_refreshing() {
        assert!(
            std::time::Instant::now() < deadline,
            "a refresh did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}
