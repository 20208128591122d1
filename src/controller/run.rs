//! Running the controllers: leader election, the three controllers, the HTTP endpoints, and a
//! graceful shutdown on SIGTERM/SIGINT.

use super::lease::LeaderElector;
use super::queue::Stage;
use super::{Config, Context, policy, push_job, repository, restore_job};
use crate::api::{MANAGED_BY, MANAGED_BY_LABEL, PushJob, PushPolicy, Repository, RestoreJob};
use crate::metrics::Metrics;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long running reconciles may take to finish after SIGTERM before the lease is handed back.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Reconciles one controller runs at once. Unbounded, a start with 11,000 objects in the
/// caches ran 11,000 reconciles side by side, each with its API requests and lists in flight,
/// and the memory they took at that peak stayed with the process.
const RECONCILES_AT_ONCE: u16 = 16;

fn bounded() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(RECONCILES_AT_ONCE)
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: Config,
    pub listen: std::net::SocketAddr,
    pub leader_election: bool,
    pub lease_namespace: String,
    pub lease_name: String,
    pub lease_duration: Duration,
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

fn serve(
    listen: std::net::SocketAddr,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let r = ready.clone();
                async move {
                    if r.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%listen, error = %e, "cannot listen for /metrics");
                return;
            }
        };
        let mut stop = stop;
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    })
}

/// The stop signal: set on SIGTERM/SIGINT, when the lease is lost, or at the end.
type Stop = (Arc<tokio::sync::watch::Sender<bool>>, tokio::sync::watch::Receiver<bool>);

/// Resolves once the stop signal is set.
async fn stopped(rx: tokio::sync::watch::Receiver<bool>) {
    let mut rx = rx;
    let _ = rx.wait_for(|s| *s).await;
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop: Stop = (Arc::new(stop_tx), stop_rx);
    let server = serve(opts.listen, metrics.clone(), ready.clone(), stop.1.clone());
    stop_on_signal(stop.0.clone());
    // Standbys are ready too: they serve metrics and wait for the lease.
    ready.store(true, Ordering::Relaxed);
    let elector = match opts.leader_election {
        false => None,
        true => match lead(&client, &opts, &stop).await {
            Some(el) => Some(el),
            // Stopped while waiting for the lease.
            None => {
                server.await.ok();
                return Ok(());
            }
        },
    };
    run_controllers(&client, &opts, metrics, &stop).await;
    if let Some(el) = &elector {
        el.release().await;
    }
    let _ = stop.0.send(true);
    server.await.ok();
    Ok(())
}

fn stop_on_signal(tx: Arc<tokio::sync::watch::Sender<bool>>) {
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
}

/// Waits for the leader lease, then keeps renewing it in the background (stopping everything if
/// it is lost); None when stopped before it was won.
async fn lead(client: &Client, opts: &RunOptions, stop: &Stop) -> Option<Arc<LeaderElector>> {
    let identity = format!("{}-{}", crate::store::push::hostname(), &crate::store::id::Id::random().to_hex()[..8]);
    let el = Arc::new(LeaderElector::new(
        Api::namespaced(client.clone(), &opts.lease_namespace),
        &opts.lease_name,
        &identity,
        opts.lease_duration,
    ));
    tracing::info!(identity = %el.identity, lease = %opts.lease_name, "waiting for the leader lease");
    loop {
        match el.try_acquire().await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {},
            _ = stopped(stop.1.clone()) => return None,
        }
    }
    tracing::info!(identity = %el.identity, "leading");
    tokio::spawn(keep_lease(el.clone(), opts.lease_duration, stop.clone()));
    Some(el)
}

/// Renews the lease every third of its duration; sets the stop signal when another instance
/// holds it or when it could not be renewed for a whole duration.
async fn keep_lease(el: Arc<LeaderElector>, duration: Duration, stop: Stop) {
    let (tx, mut rx) = stop;
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(duration / 3) => {},
            _ = rx.wait_for(|s| *s) => return,
        }
        match el.try_acquire().await {
            Ok(true) => last_ok = Instant::now(),
            Ok(false) => {
                tracing::error!("leader lease lost to another instance; stopping");
                let _ = tx.send(true);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the leader lease");
                if last_ok.elapsed() > duration {
                    tracing::error!("leader lease expired; stopping");
                    let _ = tx.send(true);
                    return;
                }
            }
        }
    }
}

/// An Api of K in the watched namespace, or in all.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Drives a controller's stream to its end, logging each failed reconcile at debug level (the
/// error policies already logged and counted them).
async fn drive<T, E: std::fmt::Display>(stream: impl futures::Stream<Item = Result<T, E>>, what: &'static str) {
    stream
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "{what} controller");
            }
        })
        .await
}

/// The four controllers, until the stop signal (and their running reconciles after it, for a
/// bounded time).
async fn run_controllers(client: &Client, opts: &RunOptions, metrics: Metrics, stop: &Stop) {
    let ns = opts.config.namespace.as_deref();
    let (jobs_api, pods_api) = (scoped::<PushJob>(client, ns), scoped::<Pod>(client, ns));
    let ours = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let job_ctrl = Controller::new(jobs_api.clone(), watcher::Config::default())
        .with_config(bounded())
        .owns(pods_api.clone(), ours.clone());
    let restore_ctrl = Controller::new(scoped::<RestoreJob>(client, ns), watcher::Config::default())
        .with_config(bounded())
        .owns(pods_api.clone(), ours);
    let ctx = Arc::new(
        Context::with_metrics(client.clone(), opts.config.clone(), job_ctrl.store(), metrics)
            .with_restores(restore_ctrl.store()),
    );
    let job_ctrl = job_ctrl.reconcile_on(waiting(ctx.jobs.clone(), ctx.slots_freed.subscribe(), |j| j.phase().into()));
    let restore_ctrl =
        restore_ctrl.reconcile_on(waiting(ctx.restores.clone(), ctx.slots_freed.subscribe(), |j| j.phase().into()));
    let until = || stopped(stop.1.clone());
    let jobs = job_ctrl.graceful_shutdown_on(until()).run(
        |j, c| timed("pushjob", c.clone(), push_job::reconcile(j, c)),
        push_job::error_policy,
        ctx.clone(),
    );
    let restores = restore_ctrl.graceful_shutdown_on(until()).run(
        |j, c| timed("restorejob", c.clone(), restore_job::reconcile(j, c)),
        restore_job::error_policy,
        ctx.clone(),
    );
    let repo_ctrl =
        Controller::new(scoped::<Repository>(client, ns), watcher::Config::default()).with_config(bounded());
    let sweeper = repository::sweep_loop(ctx.clone(), repo_ctrl.store());
    let repos = repo_ctrl.graceful_shutdown_on(until()).run(
        |r, c| timed("repository", c.clone(), repository::reconcile(r, c)),
        repository::error_policy,
        ctx.clone(),
    );
    let scheduled = watcher::Config::default().labels(policy::plan::POLICY_LABEL);
    let policies = Controller::new(scoped::<PushPolicy>(client, ns), watcher::Config::default())
        .with_config(bounded())
        .owns(jobs_api, scheduled.clone())
        .owns(pods_api, scheduled)
        .graceful_shutdown_on(until())
        .run(|p, c| timed("pushpolicy", c.clone(), policy::reconcile(p, c)), policy::error_policy, ctx.clone());
    tracing::info!(max_concurrent_pushes = opts.config.max_concurrent_pushes, "controllers running");
    // After the stop signal the controllers finish their running reconciles, but a controller
    // whose watch is failing (a missing API, RBAC) can take much longer to wind down: bound the
    // wait, then hand the lease back anyway, so a standby takes over at once instead of after
    // the lease expires. Reconciles are level-based; the next leader redoes what was cut short.
    let drained = async {
        tokio::join!(
            drive(jobs, "pushjob"),
            drive(restores, "restorejob"),
            drive(repos, "repository"),
            drive(policies, "pushpolicy"),
            // The sweep has nothing to finish: it stops with the stop signal.
            async {
                tokio::select! {
                    _ = sweeper => {}
                    _ = until() => {}
                }
            }
        );
    };
    let grace = async {
        until().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = drained => {}
        _ = grace => tracing::warn!(grace = ?SHUTDOWN_GRACE, "controllers still draining; releasing the lease anyway"),
    }
}

/// The jobs of `store` waiting for a push slot, each time one is freed: they are reconciled at
/// once instead of at their next requeue (a queued P1 job must not lose seconds of its deadline).
fn waiting<K>(
    store: Store<K>,
    freed: tokio::sync::watch::Receiver<u64>,
    stage: fn(&K) -> Stage,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    futures::stream::unfold(freed, |mut rx| async move { rx.changed().await.ok().map(|_| ((), rx)) }).flat_map(
        move |_| {
            let refs: Vec<ObjectRef<K>> =
                store.state().iter().filter(|j| stage(j).is_waiting()).map(|j| ObjectRef::from_obj(&**j)).collect();
            futures::stream::iter(refs)
        },
    )
}

/// A reconcile, counted and timed under `kind`.
async fn timed(
    kind: &'static str,
    ctx: Arc<Context>,
    reconcile: impl std::future::Future<Output = Result<Action, super::Error>>,
) -> Result<Action, super::Error> {
    let t = Instant::now();
    ctx.metrics.reconciles.with_label_values(&[kind]).inc();
    let r = reconcile.await;
    ctx.metrics.reconcile_duration.with_label_values(&[kind]).observe(t.elapsed().as_secs_f64());
    r
}
