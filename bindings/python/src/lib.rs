//! The native half of the Python package `catalyst-connectors` (module `catalyst_connectors`):
//! the library's connections and connectors for Python, through PyO3, as an abi3 wheel.
//!
//! - Every blocking call releases the GIL while it waits; objects are usable from many threads.
//! - One Tokio runtime per process, started on first use. After `os.fork()` (gunicorn, `multiprocessing`
//!   with fork) the child starts its own runtime on first use, and every connection made before
//!   the fork is rebuilt from the same config on first use in the child: its HTTP client and
//!   tasks belonged to the parent's runtime, while the tokens it needs are in the shared store.
//! - Errors are `ConnectorError` subclasses with the library's `code` and message (which never
//!   holds a secret).

use arc_swap::ArcSwap;
use catalyst_connectors::catalyst_request::CatalystCredentials;
use catalyst_connectors::{
    AccessToken, Connection as Core, Connector as CoreConnector, ConnectorStatus, Error, ErrorKind,
    ExposeSecret, GrantCode, system_time_to_millis,
};
use futures::FutureExt as _;
use pyo3::BoundObject as _;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule, PyString};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use tokio::runtime::Runtime;

create_exception!(
    catalyst_connectors,
    ConnectorError,
    PyException,
    "An error of catalyst-connectors; `code` is its stable code."
);
create_exception!(
    catalyst_connectors,
    ReauthorizationRequired,
    ConnectorError,
    "A person must authorize the connector again."
);
create_exception!(
    catalyst_connectors,
    MissingRefreshToken,
    ReauthorizationRequired,
    "The connector has no refresh token yet."
);
create_exception!(
    catalyst_connectors,
    Throttled,
    ConnectorError,
    "Zoho (or the mint governor) throttles token requests: wait, then retry."
);
create_exception!(
    catalyst_connectors,
    Transient,
    ConnectorError,
    "A failure that may pass: network, timeout, 5xx, the store, the wait deadline."
);
create_exception!(
    catalyst_connectors,
    ConfigError,
    ConnectorError,
    "The configuration is wrong: config, client, token URL, store, keys."
);

/// The Python exception for a library error: the class by its kind, `code` set.
fn py_error(e: Error) -> PyErr {
    raise(e.kind(), e.to_string())
}

fn raise(kind: ErrorKind, message: String) -> PyErr {
    let err = match kind {
        ErrorKind::MissingRefreshToken => MissingRefreshToken::new_err(message),
        ErrorKind::ReauthorizationRequired => ReauthorizationRequired::new_err(message),
        ErrorKind::Throttled => Throttled::new_err(message),
        ErrorKind::Transient | ErrorKind::Store | ErrorKind::DeadlineExceeded => {
            Transient::new_err(message)
        }
        ErrorKind::Config
        | ErrorKind::UnknownConnector
        | ErrorKind::InvalidClient
        | ErrorKind::Tls
        | ErrorKind::Rejected
        | ErrorKind::MalformedResponse
        | ErrorKind::EncryptionKey
        | ErrorKind::SdkSecretKey
        | ErrorKind::StoreOpen => ConfigError::new_err(message),
        _ => ConnectorError::new_err(message),
    };
    Python::attach(|py| {
        let _ = err.value(py).setattr("code", kind.code());
    });
    err
}

// ---- one runtime per process, a new one after fork ----

/// Incremented in the child after every fork.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static RUNTIME: AtomicPtr<Runtime> = AtomicPtr::new(std::ptr::null_mut());
static RUNTIME_GENERATION: AtomicU64 = AtomicU64::new(u64::MAX);
static RUNTIME_LOCK: Mutex<()> = Mutex::new(());

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
}

fn generation() -> u64 {
    FORK_GENERATION.load(Ordering::Acquire)
}

/// This process's runtime: started on first use, and again in a forked child (the parent's
/// threads do not exist there; its runtime is left alone).
fn runtime() -> &'static Runtime {
    let current = generation();
    let ptr = RUNTIME.load(Ordering::Acquire);
    if !ptr.is_null() && RUNTIME_GENERATION.load(Ordering::Acquire) == current {
        // SAFETY: runtimes are leaked (never freed), so the pointer stays valid.
        return unsafe { &*ptr };
    }
    let _guard = RUNTIME_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let ptr = RUNTIME.load(Ordering::Acquire);
    if !ptr.is_null() && RUNTIME_GENERATION.load(Ordering::Acquire) == current {
        // SAFETY: as above.
        return unsafe { &*ptr };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("catalyst-connectors")
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot start the async runtime: {e}"));
    let leaked: &'static Runtime = Box::leak(Box::new(rt));
    RUNTIME.store((leaked as *const Runtime).cast_mut(), Ordering::Release);
    RUNTIME_GENERATION.store(current, Ordering::Release);
    leaked
}

/// Runs `fut` to its end on the runtime, without the GIL.
fn block_on<T: Send>(py: Python<'_>, fut: impl Future<Output = T> + Send) -> T {
    py.detach(|| runtime().block_on(fut))
}

/// An asyncio future on the running loop, completed by `fut` run on the runtime.
fn awaitable<'py, T, F>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let asyncio = py.import("asyncio")?;
    let event_loop = asyncio.call_method0("get_running_loop")?;
    let future = event_loop.call_method0("create_future")?;
    let (loop_ref, future_ref) = (event_loop.clone().unbind(), future.clone().unbind());
    runtime().spawn(async move {
        let result = fut.await;
        Python::attach(|py| {
            let (method, value) = match result.and_then(|v| {
                v.into_pyobject(py)
                    .map(|o| o.into_any().unbind())
                    .map_err(Into::into)
            }) {
                Ok(v) => ("set_result", v),
                Err(e) => ("set_exception", e.into_value(py).into_any()),
            };
            let future = future_ref.bind(py);
            // A cancelled future takes no result.
            let settle = pyo3::types::PyCFunction::new_closure(py, None, None, {
                let future = future.clone().unbind();
                move |args, _kwargs| -> PyResult<()> {
                    let py = args.py();
                    let f = future.bind(py);
                    if !f.call_method0("done")?.is_truthy()? {
                        f.call_method1(method, (value.bind(py),))?;
                    }
                    Ok(())
                }
            });
            if let Ok(settle) = settle {
                let _ = loop_ref
                    .bind(py)
                    .call_method1("call_soon_threadsafe", (settle,));
            }
        });
    });
    Ok(future)
}

// ---- the API ----

/// A token with its times (Unix seconds, as `time.time()`) and API domain. `repr` never shows
/// the token.
#[pyclass(frozen, module = "catalyst_connectors")]
pub struct AccessTokenInfo {
    token: String,
    #[pyo3(get)]
    expires_at: f64,
    #[pyo3(get)]
    refresh_at: f64,
    #[pyo3(get)]
    api_domain: Option<String>,
    refresh_token: Option<String>,
}

#[pymethods]
impl AccessTokenInfo {
    /// The access token.
    #[getter]
    fn token(&self) -> &str {
        &self.token
    }

    /// The refresh token a code exchange returned, if any.
    #[getter]
    fn refresh_token(&self) -> Option<&str> {
        self.refresh_token.as_deref()
    }

    fn __repr__(&self) -> String {
        format!(
            "AccessTokenInfo(token=[redacted], expires_at={}, api_domain={:?})",
            self.expires_at, self.api_domain
        )
    }
}

fn info(t: &AccessToken) -> AccessTokenInfo {
    let secs = |at| system_time_to_millis(at) as f64 / 1000.0;
    AccessTokenInfo {
        token: t.expose_secret().to_owned(),
        expires_at: secs(t.expires_at()),
        refresh_at: secs(t.refresh_at()),
        api_domain: t.api_domain().map(str::to_owned),
        refresh_token: None,
    }
}

/// Where a connection's config comes from (kept to rebuild it after a fork).
#[derive(Clone)]
enum Source {
    Json(serde_json::Value),
    Path(String),
}

struct Shared {
    source: Source,
    catalyst: Option<CatalystCredentials>,
    /// The connection and the fork generation it was made in.
    core: ArcSwap<(u64, Core)>,
}

impl Shared {
    fn build(source: &Source, catalyst: Option<&CatalystCredentials>) -> Result<Core, PyErr> {
        let mut builder = Core::builder();
        builder = match source {
            Source::Json(v) => builder.json(v.clone()),
            Source::Path(p) => builder.file(p),
        };
        if let Some(creds) = catalyst {
            // The project's cache is shared with the SDKs: nothing from this process's env.
            let store = creds
                .cache_store(None)
                .map_err(|e| raise(ErrorKind::StoreOpen, e.to_string()))?;
            builder = builder.ignore_env().store(store);
        }
        let _enter = runtime().enter();
        builder.build().map_err(py_error)
    }

    /// The connection of this process (rebuilt once after a fork).
    fn core(&self) -> PyResult<Core> {
        let current = self.core.load();
        if current.0 == generation() {
            return Ok(current.1.clone());
        }
        let rebuilt = Self::build(&self.source, self.catalyst.as_ref())?;
        self.core.store(Arc::new((generation(), rebuilt.clone())));
        Ok(rebuilt)
    }
}

/// An app: where connections keep their tokens.
#[pyclass(frozen, module = "catalyst_connectors")]
pub struct App {
    catalyst: Option<CatalystCredentials>,
}

#[pymethods]
impl App {
    /// From a request's headers (a dict of lower-case names); `None`, or no `x-zc-projectid`:
    /// the stores every program on this host shares.
    #[new]
    #[pyo3(signature = (headers=None))]
    fn new(headers: Option<HashMap<String, String>>) -> PyResult<Self> {
        let headers = headers.unwrap_or_default();
        let catalyst =
            CatalystCredentials::from_headers(|name| headers.get(name).map(String::as_str))
                .transpose()
                .map_err(|problem| raise(ErrorKind::Config, problem))?;
        Ok(Self { catalyst })
    }

    /// Whether tokens are kept in a Catalyst project's cache.
    #[getter]
    fn is_catalyst(&self) -> bool {
        self.catalyst.is_some()
    }

    /// A connection from a config: a dict of the SDKs' shape, its JSON text, or the path of a
    /// .json or .toml file.
    fn connection(&self, py: Python<'_>, config: &Bound<'_, PyAny>) -> PyResult<Connection> {
        let source = if let Ok(text) = config.cast::<PyString>() {
            let text: String = text.extract()?;
            if text.trim_start().starts_with('{') {
                Source::Json(serde_json::from_str(&text).map_err(|e| {
                    raise(
                        ErrorKind::Config,
                        format!("the connection config is not JSON ({e})"),
                    )
                })?)
            } else {
                Source::Path(text)
            }
        } else {
            let text: String = py
                .import("json")?
                .call_method1("dumps", (config,))?
                .extract()?;
            Source::Json(serde_json::from_str(&text).map_err(|e| {
                raise(
                    ErrorKind::Config,
                    format!("the connection config is not JSON ({e})"),
                )
            })?)
        };
        let core = Shared::build(&source, self.catalyst.as_ref())?;
        Ok(Connection {
            shared: Arc::new(Shared {
                source,
                catalyst: self.catalyst.clone(),
                core: ArcSwap::from_pointee((generation(), core)),
            }),
        })
    }
}

/// A set of named connectors sharing one store.
#[pyclass(frozen, module = "catalyst_connectors")]
pub struct Connection {
    shared: Arc<Shared>,
}

#[pymethods]
impl Connection {
    /// The connector `name`.
    fn get_connector(&self, name: &str) -> PyResult<Connector> {
        Connector::new(Arc::clone(&self.shared), name.to_owned(), None)
    }

    /// The configured names.
    fn names(&self) -> PyResult<Vec<String>> {
        Ok(self
            .shared
            .core()?
            .connector_names()
            .map(str::to_owned)
            .collect())
    }
}

/// One connector. Usable from many threads at once; every wait releases the GIL.
#[pyclass(frozen, module = "catalyst_connectors")]
pub struct Connector {
    shared: Arc<Shared>,
    name: String,
    user: Option<String>,
    /// The library's connector and the fork generation it belongs to.
    core: ArcSwap<(u64, CoreConnector)>,
}

impl Connector {
    fn new(shared: Arc<Shared>, name: String, user: Option<String>) -> PyResult<Self> {
        let core = Self::resolve(&shared, &name, user.as_deref())?;
        Ok(Self {
            shared,
            name,
            user,
            core: ArcSwap::from_pointee((generation(), core)),
        })
    }

    fn resolve(shared: &Shared, name: &str, user: Option<&str>) -> PyResult<CoreConnector> {
        let connector = shared.core()?.connector(name).map_err(py_error)?;
        match user {
            Some(u) => connector.for_user(u).map_err(py_error),
            None => Ok(connector),
        }
    }

    /// This process's connector (re-resolved once after a fork).
    fn current(&self) -> PyResult<CoreConnector> {
        let current = self.core.load();
        if current.0 == generation() {
            return Ok(current.1.clone());
        }
        let core = Self::resolve(&self.shared, &self.name, self.user.as_deref())?;
        self.core.store(Arc::new((generation(), core.clone())));
        Ok(core)
    }

    /// The token if one is valid in memory now (a stale one starts a background refresh).
    fn cached(&self, connector: &CoreConnector) -> Option<String> {
        let _enter = runtime().enter();
        match connector.access_token().now_or_never() {
            Some(Ok(t)) => Some(t.expose_secret().to_owned()),
            _ => None,
        }
    }
}

#[pymethods]
impl Connector {
    /// The connector's name (`<template>.<user>` for a user's connector).
    #[getter]
    fn name(&self) -> PyResult<String> {
        Ok(self.current()?.name().to_owned())
    }

    /// A valid access token: from memory when cached (no wait, no lock), else from the store, else
    /// minted once for every concurrent caller. Releases the GIL while it waits.
    fn get_access_token(&self, py: Python<'_>) -> PyResult<String> {
        {
            // The hot path: no clone, no allocation but the string handed to Python.
            let guard = self.core.load();
            if guard.0 == generation()
                && let Some(token) = self.cached(&guard.1)
            {
                return Ok(token);
            }
        }
        let connector = self.current()?;
        block_on(py, async move { connector.access_token().await })
            .map(|t| t.expose_secret().to_owned())
            .map_err(py_error)
    }

    /// `get_access_token()` for asyncio: `await connector.get_access_token_async()` (a
    /// coroutine: it touches the event loop only when awaited, so `asyncio.run(...)` takes it).
    fn get_access_token_async<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        static AWAITING: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let awaiting = AWAITING.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            let code = c"async def awaiting(start):\n    return await start()\n";
            let module = PyModule::from_code(
                py,
                code,
                c"catalyst_connectors_async.py",
                c"catalyst_connectors_async",
            )?;
            Ok(module.getattr("awaiting")?.unbind())
        })?;
        awaiting
            .bind(py)
            .call1((slf.getattr("_access_token_future")?,))
    }

    /// The asyncio future behind `get_access_token_async` (needs a running loop).
    fn _access_token_future<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let connector = self.current()?;
        if let Some(token) = self.cached(&connector) {
            let future = py
                .import("asyncio")?
                .call_method0("get_running_loop")?
                .call_method0("create_future")?;
            future.call_method1("set_result", (token,))?;
            return Ok(future);
        }
        awaitable(py, async move {
            connector
                .access_token()
                .await
                .map(|t| t.expose_secret().to_owned())
                .map_err(py_error)
        })
    }

    /// A valid access token with `expires_at`, `refresh_at` (Unix seconds) and `api_domain`.
    fn access_token(&self, py: Python<'_>) -> PyResult<AccessTokenInfo> {
        let connector = self.current()?;
        block_on(py, async move { connector.access_token().await })
            .map(|t| info(&t))
            .map_err(py_error)
    }

    /// Exchanges a grant code; the refresh token becomes this connector's (kept in the token
    /// store) and is returned in `.refresh_token`.
    fn generate_access_token(&self, py: Python<'_>, code: String) -> PyResult<AccessTokenInfo> {
        let connector = self.current()?;
        let generated = block_on(py, async move {
            connector.generate_access_token(&GrantCode::new(code)).await
        })
        .map_err(py_error)?;
        let mut out = info(&generated.access_token);
        out.refresh_token = generated
            .refresh_token
            .map(|r| r.expose_secret().to_owned());
        Ok(out)
    }

    /// Reports a token an API refused with 401: replaced once however many report it; a token
    /// already replaced is not replaced again. Returns whether it was current.
    fn invalidate(&self, py: Python<'_>, access_token: String) -> PyResult<bool> {
        let connector = self.current()?;
        block_on(py, async move {
            connector.invalidate_token_value(&access_token).await
        })
        .map_err(py_error)
    }

    /// The connector's state as a dict (times in Unix seconds; never a secret).
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let connector = self.current()?;
        let status = block_on(py, async move { connector.status().await });
        let json = status_json(&status).to_string();
        py.import("json")?
            .call_method1("loads", (json,))?
            .cast_into::<PyDict>()
            .map_err(Into::into)
    }

    /// The connector of one of this template's users (its own refresh token and token).
    fn for_user(&self, user_id: String) -> PyResult<Connector> {
        Connector::new(Arc::clone(&self.shared), self.name.clone(), Some(user_id))
    }

    fn __repr__(&self) -> String {
        format!("Connector(name={:?})", self.name)
    }
}

/// A status as plain JSON (times in Unix seconds).
fn status_json(s: &ConnectorStatus) -> serde_json::Value {
    let secs =
        |t: Option<std::time::SystemTime>| t.map(|t| system_time_to_millis(t) as f64 / 1000.0);
    serde_json::json!({
        "name": s.name,
        "state": format!("{:?}", s.state).to_lowercase(),
        "expires_at": secs(s.expires_at),
        "refresh_at": secs(s.refresh_at),
        "next_attempt_at": secs(s.next_attempt_at),
        "refreshing": s.refreshing,
        "mints_in_window": s.mints_in_window,
        "mint_limit": s.mint_limit,
        "waiters": s.waiters,
        "last_error": s.last_error.as_ref().map(|(e, at)| serde_json::json!({
            "code": e.code(), "message": e.to_string(), "at": secs(Some(*at)),
        })),
        "recorded_failure": s.recorded_failure.as_ref().map(|f| serde_json::json!({
            "code": f.code, "message": f.message, "at": secs(Some(f.at)),
            "next_attempt_at": secs(f.next_attempt_at),
        })),
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    static AT_FORK: Once = Once::new();
    AT_FORK.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic (async-signal-safe).
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
    let py = m.py();
    m.add_class::<App>()?;
    m.add_class::<Connection>()?;
    m.add_class::<Connector>()?;
    m.add_class::<AccessTokenInfo>()?;
    m.add("ConnectorError", py.get_type::<ConnectorError>())?;
    m.add(
        "ReauthorizationRequired",
        py.get_type::<ReauthorizationRequired>(),
    )?;
    m.add("MissingRefreshToken", py.get_type::<MissingRefreshToken>())?;
    m.add("Throttled", py.get_type::<Throttled>())?;
    m.add("Transient", py.get_type::<Transient>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    Ok(())
}
