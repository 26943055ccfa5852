//! `GET /metrics`: the server's numbers in the Prometheus text format, for a scraper holding the token in
//! `GRADIENT_METRICS_TOKEN_FILE` (404 without one configured, 401 without the right bearer token, 429 beyond
//! 6 requests a second). `docs/metrics.md` lists every series.
//!
//! Counters and histograms are kept as things happen: HTTP requests (by route template, method and status,
//! around the whole endpoint), the binary cache's requests, hits, misses and bytes (`cache/`), and the ends
//! of evaluations and builds, which the domain reports through its `Observer` port. Gauges are read at scrape
//! time: the installation's counts from the domain's `operations` use case (one query per family), the
//! database pools from the storage adapter.
//!
//! **No label carries a name** chosen by a user (organization, project, cache, path): only kinds, statuses
//! and route templates (`/api/v1/orgs/{org}`). The recorder is this server's own (not the `metrics` crate's
//! global one), so several servers in one process (the tests) keep their numbers apart.

use crate::state::AppState;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use gradient_domain::ports::Observer;
use gradient_domain::status::{BuildStatus, EvaluationStatus};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use poem::http::{StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response, handler};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

/// Scrapes allowed: 6 a second, in bursts of at most 5 (the seed's numbers).
pub const SCRAPES_PER_SECOND: u32 = 6;
pub const SCRAPE_BURST: u32 = 5;

/// Histogram buckets of evaluation and build durations, in seconds (1 s to 6 h).
const DURATION_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
];

/// Every series: name, kind, unit and help text (what `docs/metrics.md` lists; a test keeps them in sync).
pub const SERIES: &[(&str, &str, &str)] = &[
    ("gradient_evaluations", "gauge", "Evaluations stored, by status."),
    ("gradient_builds", "gauge", "Builds stored, by status."),
    (
        "gradient_evaluations_ended_total",
        "counter",
        "Evaluations that ended since the server started, by status.",
    ),
    (
        "gradient_builds_ended_total",
        "counter",
        "Builds that ended since the server started, by status.",
    ),
    (
        "gradient_evaluation_duration_seconds",
        "histogram",
        "From queued to ended, of the evaluations that ended since the server started, by status.",
    ),
    (
        "gradient_build_duration_seconds",
        "histogram",
        "Time spent building, of the builds that ended since the server started, by status.",
    ),
    (
        "gradient_queue_jobs",
        "gauge",
        "Jobs queued for a worker and jobs assigned to one, by state.",
    ),
    (
        "gradient_queue_oldest_wait_seconds",
        "gauge",
        "How long the oldest queued job has waited (0 when none waits).",
    ),
    (
        "gradient_workers_connected",
        "gauge",
        "Workers connected and done with their handshake.",
    ),
    (
        "gradient_worker_slots",
        "gauge",
        "Job slots of the connected workers: total, and busy (jobs assigned).",
    ),
    (
        "gradient_cache_requests_total",
        "counter",
        "Binary cache requests, by kind.",
    ),
    (
        "gradient_cache_hits_total",
        "counter",
        "Binary cache reads answered with the thing asked for, by kind.",
    ),
    (
        "gradient_cache_misses_total",
        "counter",
        "Binary cache reads of something the cache does not hold, by kind.",
    ),
    (
        "gradient_cache_served_bytes_total",
        "counter",
        "NAR bytes sent to readers of the binary caches.",
    ),
    (
        "gradient_cache_pushed_bytes_total",
        "counter",
        "Bytes received by pushes to the binary caches.",
    ),
    (
        "gradient_nar_serves_refused_total",
        "counter",
        "NAR downloads refused with 503: too many at once.",
    ),
    (
        "gradient_nar_buffered_bytes",
        "gauge",
        "NAR bytes read from the store and not yet taken by their downloads' readers.",
    ),
    ("gradient_nar_store_files", "gauge", "NAR files recorded in all caches."),
    (
        "gradient_nar_store_bytes",
        "gauge",
        "Bytes of the NAR files recorded in all caches, as stored.",
    ),
    (
        "gradient_http_requests_total",
        "counter",
        "HTTP requests, by route template, method and status.",
    ),
    (
        "gradient_db_connections",
        "gauge",
        "Database connections of each pool (main, web): open, idle and the maximum.",
    ),
];

/// Request counters by (method, status), then by route template.
type RequestCounters = HashMap<(&'static str, u16), HashMap<String, Counter>>;

/// The server's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The scrapers' bearer token; `None`: `/metrics` is 404.
    token: Option<Vec<u8>>,
    scrapes: DefaultDirectRateLimiter,
    /// Counters counted on every request, once registered: by (series, kind), and by (method, status) then
    /// route template. Looking one up here costs no allocation, unlike building the recorder's key.
    kinds: RwLock<HashMap<(&'static str, &'static str), Counter>>,
    requests: RwLock<RequestCounters>,
}

const METADATA: Metadata<'static> = Metadata::new("gradient::metrics", metrics::Level::INFO, None);

impl Metrics {
    pub fn new(token: Option<Vec<u8>>) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&DURATION_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        for (name, kind, help) in SERIES {
            let key = KeyName::from_const_str(name);
            let unit = name.ends_with("_seconds").then_some(Unit::Seconds);
            let help = SharedString::const_str(help);
            match *kind {
                "counter" => recorder.describe_counter(key, unit, help),
                "gauge" => recorder.describe_gauge(key, unit, help),
                _ => recorder.describe_histogram(key, unit, help),
            }
        }
        let quota = Quota::per_second(NonZeroU32::new(SCRAPES_PER_SECOND).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(SCRAPE_BURST).unwrap_or(NonZeroU32::MIN));
        Self {
            handle: recorder.handle(),
            recorder,
            token,
            scrapes: RateLimiter::direct(quota),
            kinds: RwLock::default(),
            requests: RwLock::default(),
        }
    }

    fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
        Key::from_parts(
            name,
            labels
                .iter()
                .map(|(k, v)| Label::new(*k, v.clone()))
                .collect::<Vec<_>>(),
        )
    }

    pub fn counter(&self, name: &'static str, labels: &[(&'static str, String)]) -> Counter {
        self.recorder.register_counter(&Self::key(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, String)]) -> Gauge {
        self.recorder.register_gauge(&Self::key(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, labels: &[(&'static str, String)]) -> Histogram {
        self.recorder.register_histogram(&Self::key(name, labels), &METADATA)
    }

    /// Adds one to the counter `name{kind="<kind>"}`.
    fn count_kind(&self, name: &'static str, kind: &'static str) {
        if let Some(counter) = self
            .kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(name, kind))
        {
            counter.increment(1);
            return;
        }
        let counter = self.counter(name, &[("kind", kind.into())]);
        counter.increment(1);
        self.kinds
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((name, kind), counter);
    }

    /// A binary cache request of `kind` (`narinfo`, `nar`, …).
    pub fn cache_request(&self, kind: &'static str) {
        self.count_kind("gradient_cache_requests_total", kind);
    }

    /// A binary cache read of `kind` found (`hit`) or not.
    pub fn cache_lookup(&self, kind: &'static str, hit: bool) {
        let name = if hit {
            "gradient_cache_hits_total"
        } else {
            "gradient_cache_misses_total"
        };
        self.count_kind(name, kind);
    }

    /// The bytes one NAR download holds in its pipe, counted in `gradient_nar_buffered_bytes` too.
    pub fn nar_buffered(&self) -> std::sync::Arc<InPipe> {
        std::sync::Arc::new(InPipe {
            gauge: self.gauge("gradient_nar_buffered_bytes", &[]),
            count: std::sync::atomic::AtomicI64::new(0),
        })
    }

    pub fn cache_served_bytes(&self) -> Counter {
        self.counter("gradient_cache_served_bytes_total", &[])
    }

    pub fn cache_pushed_bytes(&self) -> Counter {
        self.counter("gradient_cache_pushed_bytes_total", &[])
    }

    /// An HTTP request answered, by route template, method and status.
    pub(crate) fn http_request(&self, route: &str, method: &'static str, status: u16) {
        let known = self.requests.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(counter) = known.get(&(method, status)).and_then(|routes| routes.get(route)) {
            counter.increment(1);
            return;
        }
        drop(known);
        let counter = self.counter(
            "gradient_http_requests_total",
            &[
                ("route", route.to_owned()),
                ("method", method.to_owned()),
                ("status", status.to_string()),
            ],
        );
        counter.increment(1);
        self.requests
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((method, status))
            .or_default()
            .insert(route.to_owned(), counter);
    }

    /// Sets the gauges read at scrape time and renders everything.
    async fn render(&self, state: &AppState) -> Result<String, gradient_domain::service::ServiceError> {
        let ops = state.core.operations().await?;
        for (status, n) in &ops.evaluations {
            self.gauge("gradient_evaluations", &[("status", status.as_str().into())])
                .set(*n as f64);
        }
        for (status, n) in &ops.builds {
            self.gauge("gradient_builds", &[("status", status.as_str().into())])
                .set(*n as f64);
        }
        for (state, n) in [("queued", ops.queued_jobs), ("assigned", ops.assigned_jobs)] {
            self.gauge("gradient_queue_jobs", &[("state", state.into())])
                .set(n as f64);
        }
        self.gauge("gradient_queue_oldest_wait_seconds", &[])
            .set(ops.oldest_queued_wait.as_secs_f64());
        self.gauge("gradient_workers_connected", &[]).set(ops.workers as f64);
        for (state, n) in [("total", ops.slots), ("busy", ops.assigned_jobs)] {
            self.gauge("gradient_worker_slots", &[("state", state.into())])
                .set(n as f64);
        }
        self.gauge("gradient_nar_store_files", &[]).set(ops.nar_files as f64);
        self.gauge("gradient_nar_buffered_bytes", &[]).increment(0.0);
        self.gauge("gradient_nar_store_bytes", &[]).set(ops.nar_bytes as f64);
        for pool in state.storage_pools() {
            for (what, n) in [("open", pool.open), ("idle", pool.idle), ("max", pool.max)] {
                self.gauge(
                    "gradient_db_connections",
                    &[("pool", pool.name.into()), ("state", what.into())],
                )
                .set(f64::from(n));
            }
        }
        self.handle.run_upkeep();
        Ok(self.handle.render())
    }

    /// Whether `header` (an `Authorization` value) carries the token, compared in constant time.
    fn authorized(&self, header: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        let (Some(token), Some(given)) = (&self.token, header.and_then(crate::bearer_token)) else {
            return false;
        };
        // Hashing first makes the comparison's time independent of the lengths too.
        let digest = |b: &[u8]| -> [u8; 32] {
            use sha2::Digest;
            sha2::Sha256::digest(b).into()
        };
        digest(given.trim().as_bytes()).ct_eq(&digest(token)).into()
    }
}

/// What one download holds between the store and its reader; what is left when it ends leaves the gauge.
pub struct InPipe {
    gauge: Gauge,
    count: std::sync::atomic::AtomicI64,
}

impl InPipe {
    pub fn add(&self, n: usize) {
        self.count.fetch_add(n as i64, std::sync::atomic::Ordering::Relaxed);
        self.gauge.increment(n as f64);
    }

    pub fn take(&self, n: usize) {
        self.count.fetch_sub(n as i64, std::sync::atomic::Ordering::Relaxed);
        self.gauge.decrement(n as f64);
    }
}

impl Drop for InPipe {
    fn drop(&mut self) {
        self.gauge
            .decrement(self.count.load(std::sync::atomic::Ordering::Relaxed) as f64);
    }
}

impl Observer for Metrics {
    fn evaluation_ended(&self, status: EvaluationStatus, took: Duration) {
        let labels = [("status", status.as_str().to_owned())];
        self.counter("gradient_evaluations_ended_total", &labels).increment(1);
        self.histogram("gradient_evaluation_duration_seconds", &labels)
            .record(took.as_secs_f64());
    }

    fn build_ended(&self, status: BuildStatus, built_for: Option<Duration>) {
        let labels = [("status", status.as_str().to_owned())];
        self.counter("gradient_builds_ended_total", &labels).increment(1);
        if let Some(d) = built_for {
            self.histogram("gradient_build_duration_seconds", &labels)
                .record(d.as_secs_f64());
        }
    }

    fn build_move_lost(
        &self,
        build: gradient_domain::BuildId,
        expected: BuildStatus,
        actual: Option<BuildStatus>,
        to: BuildStatus,
    ) {
        tracing::debug!(
            build = %build,
            expected = expected.as_str(),
            actual = actual.map_or("gone or not read", BuildStatus::as_str),
            to = to.as_str(),
            "a build's move lost its compare-and-set: it moved meanwhile, and that move stands"
        );
    }

    fn job_stranded(&self, job: gradient_domain::model::JobId, worker: gradient_domain::WorkerId) {
        tracing::warn!(
            job = %job.0,
            worker = %worker.0,
            "a job withheld from its worker could be neither ended nor requeued (storage failed): it holds one \
             of the worker's slots until the next dispatch round ends it"
        );
    }

    fn queue_again_failed(&self, jobs: &[gradient_domain::model::JobId], code: &'static str) {
        let jobs: Vec<String> = jobs.iter().map(|j| j.0.to_string()).collect();
        tracing::warn!(
            jobs = %jobs.join(","),
            error = code,
            "a report's jobs ended, but their builds restarted meanwhile could not be queued again: they wait \
             for reconciliation or the next evaluation needing them"
        );
    }
}

/// Reads the scrapers' token file: one line, not empty.
pub fn read_token(file: &std::path::Path) -> Result<Vec<u8>, crate::config::ConfigError> {
    let var = crate::config::env_name("metricsTokenFile");
    let text = std::fs::read_to_string(file).map_err(|e| crate::config::ConfigError {
        var: var.clone(),
        problem: format!("cannot read {}: {e}", file.display()),
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(crate::config::ConfigError {
            var,
            problem: format!("{} is empty", file.display()),
        });
    }
    Ok(token.as_bytes().to_vec())
}

fn plain(status: StatusCode, body: &str) -> Response {
    Response::builder()
        .status(status)
        .content_type("text/plain; charset=utf-8")
        .body(format!("{body}\n"))
}

#[handler]
pub async fn endpoint(req: &Request) -> Response {
    let state: &AppState = req.data().expect("state is attached to /metrics");
    let metrics = &state.metrics;
    if metrics.token.is_none() {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    // The token first: only the scraper's requests use up the rate, so others cannot crowd it out.
    if !metrics.authorized(req.header(header::AUTHORIZATION)) {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, "Bearer realm=\"Gradient metrics\"")
            .content_type("text/plain; charset=utf-8")
            .body("a bearer token is required\n");
    }
    if let Err(not_until) = metrics.scrapes.check() {
        use governor::clock::Clock;
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        return Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header(header::RETRY_AFTER, crate::limits::retry_after_secs(wait))
            .content_type("text/plain; charset=utf-8")
            .body("too many scrapes; at most 6 a second\n");
    }
    match metrics.render(state).await {
        Ok(text) => Response::builder()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(text),
        Err(e) => {
            tracing::error!(target: "gradient::web", "reading metrics failed: {e}");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// Counts every request by its route template (never its path), method and status.
pub struct Measured<E> {
    pub inner: E,
    pub routes: crate::api::AllowedMethods,
    pub metrics: std::sync::Arc<Metrics>,
}

/// Methods counted by name; any other is `other`.
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT"];

impl<E: Endpoint> Endpoint for Measured<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let route = self.routes.template_for(req.uri().path()).unwrap_or("other");
        let method = METHODS
            .into_iter()
            .find(|m| *m == req.method().as_str())
            .unwrap_or("other");
        let resp = match self.inner.call(req).await {
            Ok(resp) => resp.into_response(),
            Err(e) => e.into_response(),
        };
        self.metrics.http_request(route, method, resp.status().as_u16());
        Ok(resp)
    }
}
