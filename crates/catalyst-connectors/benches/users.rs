//! 100,000 users resident on one template: memory per resident user (counted by a global
//! allocator wrapper) and the hot path for a random user (`for_user` + `access_token`).
//!
//! The store is filled directly with each user's refresh-token and token records (the formats
//! the connector writes), so no token endpoint is needed: a mint attempt would fail the run.

use catalyst_connectors::store::{TokenStore, TokenWrite};
use catalyst_connectors::{
    AccessTokenSecret, Connection, MemoryStore, TokenRecord, key, system_time_to_millis,
};
use criterion::Criterion;
use futures::FutureExt as _;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, SystemTime};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const USERS: usize = 100_000;
const CLIENT_ID: &str = "1000.USERS";
const SECRET: &str = "users-secret";
const TOKEN_URL: &str = "http://127.0.0.1:9/oauth/v2/token";

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store = Arc::new(MemoryStore::new());
    let ids: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    let now = system_time_to_millis(SystemTime::now());
    runtime.block_on(async {
        for id in &ids {
            let name = format!("crm.{id}");
            let rt = format!("1000.refresh-{id}");
            let rkey = key::refresh_token_key(&name, CLIENT_ID, TOKEN_URL);
            let refresh = serde_json::json!({"refresh_token": rt, "client_id": CLIENT_ID, "refresh_url": TOKEN_URL,
                "subject": key::user_subject(id), "obtained_at": now})
            .to_string();
            let tkey = key::sdk_key(&name, &[&rt, CLIENT_ID, SECRET, TOKEN_URL, TOKEN_URL, ""]);
            let record = TokenRecord {
                access_token: AccessTokenSecret::new(format!("1000.{:032x}", rand::random::<u128>())),
                refresh_at: now + 2_700_000,
                expires_at: now + 3_600_000,
                lifetime_secs: 3600,
                api_domain: None,
                issued_at: Some(now),
                fingerprint: Some(key::fingerprint(CLIENT_ID, &rt, TOKEN_URL)),
            };
            let data = record.to_json();
            store
                .compare_and_set(TokenWrite::new(&tkey, None, &data, Duration::from_secs(3600)).with_refresh(&rkey, &refresh))
                .await
                .expect("store");
        }
    });
    let connection = Connection::builder()
        .ignore_env()
        .shared_store(store)
        .user_capacity(USERS + USERS / 5)
        .json(
            serde_json::json!({"crm": {"client_id": CLIENT_ID, "client_secret": SECRET,
            "auth_url": TOKEN_URL, "refresh_url": TOKEN_URL, "dc": "eu"}}),
        )
        .build()
        .expect("connection");
    let crm = connection.connector("crm").expect("crm");

    let before = LIVE.load(Ordering::Relaxed);
    runtime.block_on(async {
        for id in &ids {
            crm.for_user(id)
                .expect("user")
                .access_token()
                .await
                .expect("token from the store");
        }
    });
    let after = LIVE.load(Ordering::Relaxed);
    let per_user = (after - before) as f64 / USERS as f64;
    // The token strings themselves: the token (37 bytes) and its header value (53 bytes).
    let strings = 37.0 + 53.0;
    println!(
        "{USERS} users resident ({} in the cache): {:.0} bytes per user in all, {:.0} beyond the token strings",
        crm.resident_users(),
        per_user,
        per_user - strings
    );

    let mut c = Criterion::default().configure_from_args();
    let mut i: u64 = 0x9E37_79B9;
    c.bench_function("users/access_token_random_user_of_100k", |b| {
        b.iter(|| {
            i = i
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let id = &ids[(i >> 33) as usize % USERS];
            let token = crm
                .for_user(id)
                .expect("user")
                .access_token()
                .now_or_never()
                .expect("resident users never wait")
                .expect("token");
            black_box(token)
        })
    });
    c.final_summary();
}
