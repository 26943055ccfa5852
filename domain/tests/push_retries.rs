#![allow(clippy::unwrap_used)]
//! A worker's pushes of what one Nix run built (`push::push_more_retrying`): when the run knows a push's closure
//! it asks Nix only for the export; a refusal of such a push is made again at once asking Nix for the closure;
//! a cache that fails is tried again after each delay, sending only what it still lacks. Over a Nix and a cache
//! that answer from tables and record what they were asked (the real ones are covered end to end).

use gradient_domain::ports::cache_client::{CacheClient, CacheClientError};
use gradient_domain::ports::nix::{
    BuildOptions, BuildOutput, EvalBatch, EvalSummary, ExportStream, FetchedFlake, HostInfo, Nix, NixError,
};
use gradient_domain::proto::PushTarget;
use gradient_domain::push::{PUSH_RETRY_DELAYS, push_more_retrying};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A store whose closures come from a table; records what it was asked.
#[derive(Clone, Default)]
struct TableNix {
    /// Path → the paths it refers to (besides itself).
    refs: HashMap<String, Vec<String>>,
    requisites_asked: Arc<Mutex<Vec<Vec<String>>>>,
    exported: Arc<Mutex<Vec<Vec<String>>>>,
}

impl TableNix {
    fn closure(&self, path: &str, out: &mut Vec<String>) {
        if out.iter().any(|p| p == path) {
            return;
        }
        for r in self.refs.get(path).into_iter().flatten() {
            self.closure(r, out);
        }
        out.push(path.to_owned());
    }
}

impl Nix for TableNix {
    async fn host(&self) -> Result<HostInfo, NixError> {
        unimplemented!("not used by pushes")
    }
    async fn fetch(
        &self,
        _: &str,
        _: Option<&str>,
        _: &str,
        _: &BTreeMap<String, gradient_domain::model::InputOverride>,
        _: Option<&gradient_domain::deploy_key::RepositoryCredential>,
    ) -> Result<FetchedFlake, NixError> {
        unimplemented!("not used by pushes")
    }
    async fn evaluate(
        &self,
        _: &FetchedFlake,
        _: &str,
        _: impl FnMut(EvalBatch) + Send,
    ) -> Result<EvalSummary, NixError> {
        unimplemented!("not used by pushes")
    }
    async fn build(&self, _: &str, _: &BuildOptions, _: impl FnMut(&str) + Send) -> Result<BuildOutput, NixError> {
        unimplemented!("not used by pushes")
    }
    async fn build_many(
        &self,
        _: &[(String, BTreeMap<String, String>)],
        _: &BuildOptions,
        _: impl FnMut(&str, &str) + Send,
        _: impl FnMut(&str) + Send,
    ) -> Result<Vec<Result<BuildOutput, NixError>>, NixError> {
        unimplemented!("not used by pushes")
    }
    async fn requisites(&self, paths: &[String]) -> Result<Vec<String>, NixError> {
        self.requisites_asked.lock().unwrap().push(paths.to_vec());
        let mut out = Vec::new();
        for p in paths {
            self.closure(p, &mut out);
        }
        Ok(out)
    }
    async fn build_inputs(&self, _: &[String]) -> Result<BTreeMap<String, Vec<String>>, NixError> {
        unimplemented!("not used by pushes")
    }
    async fn export(&self, paths: &[String]) -> Result<ExportStream, NixError> {
        self.exported.lock().unwrap().push(paths.to_vec());
        // The stream carries the paths' names: the cache below reads them back.
        let body = bytes::Bytes::from(paths.join("\n"));
        Ok(Box::pin(futures_util_once(body)))
    }
}

/// A stream of one item.
fn futures_util_once(body: bytes::Bytes) -> impl futures_core::Stream<Item = Result<bytes::Bytes, NixError>> + Send {
    struct Once(Option<bytes::Bytes>);
    impl futures_core::Stream for Once {
        type Item = Result<bytes::Bytes, NixError>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.take().map(Ok))
        }
    }
    Once(Some(body))
}

/// A cache holding a set of paths; its imports answer from a script (then succeed); records its questions.
#[derive(Clone, Default)]
struct ScriptedCache {
    held: Arc<Mutex<HashSet<String>>>,
    /// The answers of the next imports, in order: an error, or `None` to import.
    script: Arc<Mutex<Vec<Option<CacheClientError>>>>,
    asked: Arc<Mutex<Vec<Vec<String>>>>,
}

impl CacheClient for ScriptedCache {
    async fn missing(&self, _: &PushTarget, paths: &[String]) -> Result<Vec<String>, CacheClientError> {
        self.asked.lock().unwrap().push(paths.to_vec());
        let held = self.held.lock().unwrap();
        Ok(paths.iter().filter(|p| !held.contains(*p)).cloned().collect())
    }
    async fn import(&self, _: &PushTarget, mut export: ExportStream) -> Result<u64, CacheClientError> {
        let mut body = Vec::new();
        while let Some(piece) = std::future::poll_fn(|cx| export.as_mut().poll_next(cx)).await {
            body.extend_from_slice(&piece.unwrap());
        }
        let next = {
            let mut script = self.script.lock().unwrap();
            if script.is_empty() { None } else { script.remove(0) }
        };
        if let Some(e) = next {
            return Err(e);
        }
        let paths: Vec<String> = String::from_utf8(body).unwrap().lines().map(str::to_owned).collect();
        self.held.lock().unwrap().extend(paths.iter().cloned());
        Ok(paths.len() as u64)
    }
}

fn p(name: &str) -> String {
    format!(
        "/nix/store/{}-{name}",
        name.repeat(32).chars().take(32).collect::<String>()
    )
}

fn target() -> PushTarget {
    PushTarget {
        cache_url: "http://127.0.0.1:1/cache/main".into(),
        token: "GRADJOB.test".into(),
    }
}

/// `b` refers to `a`, `c` to `b`; the run built `b` and `c` (it knows what they may refer to), `a` was in the
/// cache before.
fn setup() -> (TableNix, ScriptedCache, HashMap<String, Vec<String>>, HashSet<String>) {
    let (a, b, c) = (p("a"), p("b"), p("c"));
    let nix = TableNix {
        refs: [(b.clone(), vec![a.clone()]), (c.clone(), vec![b.clone()])].into(),
        ..TableNix::default()
    };
    let cache = ScriptedCache::default();
    cache.held.lock().unwrap().insert(a.clone());
    let may_refer: HashMap<String, Vec<String>> = [(b.clone(), vec![a.clone()]), (c, vec![b])].into();
    let in_cache: HashSet<String> = [a].into();
    (nix, cache, may_refer, in_cache)
}

fn no_wait() -> impl FnMut(Duration, &NixError) -> std::future::Ready<()> {
    |_, _| std::future::ready(())
}

#[tokio::test]
async fn a_push_whose_closure_the_run_knows_asks_nix_only_for_the_export() {
    let (nix, cache, may_refer, mut in_cache) = setup();
    let paths = [p("b"), p("c")];
    let imported = push_more_retrying(&nix, &cache, &target(), &paths, &mut in_cache, &may_refer, no_wait())
        .await
        .unwrap();
    assert_eq!(imported, 2);
    assert!(
        nix.requisites_asked.lock().unwrap().is_empty(),
        "no closure asked of Nix"
    );
    assert_eq!(
        *nix.exported.lock().unwrap(),
        vec![vec![p("b"), p("c")]],
        "in dependency order"
    );
    assert_eq!(
        *cache.asked.lock().unwrap(),
        vec![vec![p("b"), p("c")]],
        "a is known held"
    );
    assert!(in_cache.contains(&p("b")) && in_cache.contains(&p("c")));

    // The next push of the run: everything known held, nothing asked of anyone.
    let asked_before = cache.asked.lock().unwrap().len();
    assert_eq!(
        push_more_retrying(&nix, &cache, &target(), &[p("c")], &mut in_cache, &may_refer, no_wait())
            .await
            .unwrap(),
        0
    );
    assert_eq!(cache.asked.lock().unwrap().len(), asked_before);
}

#[tokio::test]
async fn a_known_push_the_cache_refuses_is_made_again_at_once_with_the_closure_from_nix() {
    let (nix, cache, may_refer, mut in_cache) = setup();
    // What the run believed the cache holds is not there (say `a` was deleted from the cache meanwhile): the
    // cache refuses the stream, which refers to a path it lacks.
    cache.held.lock().unwrap().clear();
    cache.script.lock().unwrap().push(Some(CacheClientError::Refused {
        status: 400,
        message: "a reference is missing".into(),
    }));
    let mut waits = Vec::new();
    let paths = [p("b"), p("c")];
    let imported = push_more_retrying(&nix, &cache, &target(), &paths, &mut in_cache, &may_refer, |d, _| {
        waits.push(d);
        async {}
    })
    .await
    .unwrap();
    assert!(waits.is_empty(), "made again at once");
    assert_eq!(nix.exported.lock().unwrap()[0], paths, "first the known closure");
    assert_eq!(
        *nix.requisites_asked.lock().unwrap(),
        vec![paths.to_vec()],
        "then the closure from Nix"
    );
    let asked = cache.asked.lock().unwrap().clone();
    assert_eq!(
        asked.last().unwrap(),
        &vec![p("a"), p("b"), p("c")],
        "the whole closure asked about"
    );
    assert_eq!(imported, 3);
    assert!(
        ["a", "b", "c"]
            .iter()
            .all(|n| cache.held.lock().unwrap().contains(&p(n)))
    );

    // Refused the usual way too: the push fails, without waiting.
    let (nix, cache, may_refer, mut in_cache) = setup();
    cache.held.lock().unwrap().clear();
    for _ in 0..2 {
        cache.script.lock().unwrap().push(Some(CacheClientError::Refused {
            status: 403,
            message: "not yours".into(),
        }));
    }
    let err = push_more_retrying(&nix, &cache, &target(), &paths, &mut in_cache, &may_refer, no_wait())
        .await
        .unwrap_err();
    assert!(matches!(&err, NixError::Push(m) if m.contains("not yours")), "{err:?}");
    assert_eq!(nix.exported.lock().unwrap().len(), 2, "twice: known, then from Nix");
}

#[tokio::test]
async fn a_cache_that_fails_is_tried_again_after_each_delay_and_then_the_push_fails() {
    let (nix, cache, may_refer, mut in_cache) = setup();
    cache
        .script
        .lock()
        .unwrap()
        .push(Some(CacheClientError::Unavailable("502".into())));
    let mut waits = Vec::new();
    let imported = push_more_retrying(
        &nix,
        &cache,
        &target(),
        &[p("b"), p("c")],
        &mut in_cache,
        &may_refer,
        |d, _| {
            waits.push(d);
            async {}
        },
    )
    .await
    .unwrap();
    assert_eq!(waits, [PUSH_RETRY_DELAYS[0]]);
    assert_eq!(imported, 2);
    assert!(
        nix.requisites_asked.lock().unwrap().is_empty(),
        "still known: no closure asked"
    );

    // Failing at every attempt: one wait per delay, then the error.
    let (nix, cache, may_refer, mut in_cache) = setup();
    for _ in 0..=PUSH_RETRY_DELAYS.len() {
        cache
            .script
            .lock()
            .unwrap()
            .push(Some(CacheClientError::Unavailable("down".into())));
    }
    let mut waits = Vec::new();
    let err = push_more_retrying(&nix, &cache, &target(), &[p("c")], &mut in_cache, &may_refer, |d, _| {
        waits.push(d);
        async {}
    })
    .await
    .unwrap_err();
    assert_eq!(waits, PUSH_RETRY_DELAYS);
    assert!(matches!(&err, NixError::Push(m) if m.contains("down")), "{err:?}");
    assert!(!in_cache.contains(&p("c")), "nothing believed held");
}
