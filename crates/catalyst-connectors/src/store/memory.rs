//! [`MemoryStore`]: a process-local store, the reference implementation of the contract.

use super::{CasOutcome, StoreError, StoredValue, TokenStore, TokenWrite};
use crate::clock::{Clock, EpochMillis, SystemClock, duration_millis};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug)]
struct MemoryEntry {
    generation: u64,
    data: String,
    expires_at: EpochMillis,
}

/// A process-local store (the default until a shared one is configured). Clones share contents.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<MemoryInner>>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    records: HashMap<String, MemoryEntry>,
    /// Generations survive deletes so a deleted-then-rewritten key never reuses a generation.
    last_generation: HashMap<String, u64>,
    leases: HashMap<String, (String, EpochMillis)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store whose expiries follow `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(MemoryInner::default())),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that matters
        // (each operation is a single insert/remove), so recover from poisoning.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError> {
        let now = self.clock.now_millis();
        let inner = self.lock();
        Ok(inner
            .records
            .get(key)
            .filter(|e| e.expires_at > now)
            .map(|e| StoredValue {
                generation: e.generation,
                data: e.data.clone(),
            }))
    }

    async fn compare_and_set(&self, write: TokenWrite<'_>) -> Result<CasOutcome, StoreError> {
        let TokenWrite {
            key,
            expected,
            data,
            ttl,
            refresh,
        } = write;
        let now = self.clock.now_millis();
        let mut inner = self.lock();
        if let Some((rkey, rdata)) = refresh {
            let generation = inner.last_generation.get(rkey).copied().unwrap_or(0) + 1;
            inner.last_generation.insert(rkey.to_owned(), generation);
            inner.records.insert(
                rkey.to_owned(),
                MemoryEntry {
                    generation,
                    data: rdata.to_owned(),
                    expires_at: i64::MAX,
                },
            );
        }
        let current = inner
            .records
            .get(key)
            .filter(|e| e.expires_at > now)
            .map(|e| e.generation);
        if current != expected {
            return Ok(CasOutcome::Conflict { current });
        }
        let last = inner.last_generation.get(key).copied().unwrap_or(0);
        let generation = last.max(expected.unwrap_or(0)) + 1;
        inner.last_generation.insert(key.to_owned(), generation);
        inner.records.insert(
            key.to_owned(),
            MemoryEntry {
                generation,
                data: data.to_owned(),
                expires_at: now.saturating_add(duration_millis(ttl)),
            },
        );
        Ok(CasOutcome::Written { generation })
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        match (inner.records.get(key), expected) {
            (Some(e), Some(g)) if e.generation != g => Ok(false),
            (Some(_), _) => Ok(inner.records.remove(key).is_some()),
            (None, _) => Ok(false),
        }
    }

    async fn try_acquire_lease(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_millis();
        let mut inner = self.lock();
        let free = match inner.leases.get(key) {
            None => true,
            Some((holder, until)) => holder == owner || *until <= now,
        };
        if free {
            inner.leases.insert(
                key.to_owned(),
                (owner.to_owned(), now.saturating_add(duration_millis(ttl))),
            );
        }
        Ok(free)
    }

    async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner
            .leases
            .get(key)
            .is_some_and(|(holder, _)| holder == owner)
        {
            inner.leases.remove(key);
        }
        Ok(())
    }

    fn is_shared(&self) -> bool {
        false
    }
}
