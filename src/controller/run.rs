//! Running the controllers: leader election, the three controllers, the HTTP endpoints, and a
//! graceful shutdown on SIGTERM/SIGINT.

use super::lease::LeaderElector;
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
use kube::runtime::watcher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long running reconciles may take to finish after SIGTERM before the lease is handed back.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = serve(opts.listen, metrics.clone(), ready.clone(), stop_rx.clone());
    let stop_tx = Arc::new(stop_tx);
    {
        let tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            let _ = tx.send(true);
        });
    }
    let stopped = |rx: tokio::sync::watch::Receiver<bool>| async move {
        let mut rx = rx;
        let _ = rx.wait_for(|s| *s).await;
    };

    let identity = format!("{}-{}", crate::store::push::hostname(), &crate::store::id::Id::random().to_hex()[..8]);
    let elector = opts.leader_election.then(|| {
        LeaderElector::new(
            Api::namespaced(client.clone(), &opts.lease_namespace),
            &opts.lease_name,
            &identity,
            opts.lease_duration,
        )
    });
    // Standbys are ready too: they serve metrics and wait for the lease.
    ready.store(true, Ordering::Relaxed);
    if let Some(el) = &elector {
        tracing::info!(identity = %el.identity, lease = %opts.lease_name, "waiting for the leader lease");
        loop {
            match el.try_acquire().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {},
                _ = stopped(stop_rx.clone()) => { server.await.ok(); return Ok(()); }
            }
        }
        tracing::info!(identity = %el.identity, "leading");
        let el2 = LeaderElector::new(
            Api::namespaced(client.clone(), &opts.lease_namespace),
            &opts.lease_name,
            &identity,
            opts.lease_duration,
        );
        let tx = stop_tx.clone();
        let duration = opts.lease_duration;
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let mut last_ok = Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(duration / 3) => {},
                    _ = rx.wait_for(|s| *s) => return,
                }
                match el2.try_acquire().await {
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
        });
    }

    let (jobs_api, repos_api, pods_api, policies_api): (Api<PushJob>, Api<Repository>, Api<Pod>, Api<PushPolicy>) =
        match &opts.config.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => {
                (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone()))
            }
        };
    let ours = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let restores_api: Api<RestoreJob> = match &opts.config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let job_ctrl = Controller::new(jobs_api.clone(), watcher::Config::default()).owns(pods_api.clone(), ours.clone());
    let restore_ctrl = Controller::new(restores_api, watcher::Config::default()).owns(pods_api.clone(), ours);
    let ctx = Arc::new(
        Context::with_metrics(client.clone(), opts.config.clone(), job_ctrl.store(), metrics.clone())
            .with_restores(restore_ctrl.store()),
    );

    let jobs = job_ctrl
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(timed_job, push_job::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "pushjob controller");
            }
        });
    let restores = restore_ctrl
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(timed_restore, restore_job::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "restorejob controller");
            }
        });
    let repos = Controller::new(repos_api, watcher::Config::default())
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(timed_repo, repository::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "repository controller");
            }
        });
    let scheduled = watcher::Config::default().labels(policy::plan::POLICY_LABEL);
    let policies = Controller::new(policies_api, watcher::Config::default())
        .owns(jobs_api, scheduled.clone())
        .owns(pods_api, scheduled)
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(timed_policy, policy::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "pushpolicy controller");
            }
        });
    tracing::info!(max_concurrent_pushes = opts.config.max_concurrent_pushes, "controllers running");
    // After the stop signal the controllers finish their running reconciles, but a controller
    // whose watch is failing (a missing API, RBAC) can take much longer to wind down: bound the
    // wait, then hand the lease back anyway, so a standby takes over at once instead of after
    // the lease expires. Reconciles are level-based; the next leader redoes what was cut short.
    let drained = async {
        tokio::join!(jobs, restores, repos, policies);
    };
    let grace = async {
        stopped(stop_rx.clone()).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = drained => {}
        _ = grace => tracing::warn!(grace = ?SHUTDOWN_GRACE, "controllers still draining; releasing the lease anyway"),
    }
    if let Some(el) = &elector {
        el.release().await;
    }
    let _ = stop_tx.send(true);
    server.await.ok();
    Ok(())
}

async fn timed_job(job: Arc<PushJob>, ctx: Arc<Context>) -> Result<Action, super::Error> {
    let t = Instant::now();
    ctx.metrics.reconciles.with_label_values(&["pushjob"]).inc();
    let r = push_job::reconcile(job, ctx.clone()).await;
    ctx.metrics.reconcile_duration.with_label_values(&["pushjob"]).observe(t.elapsed().as_secs_f64());
    r
}

async fn timed_restore(job: Arc<RestoreJob>, ctx: Arc<Context>) -> Result<Action, super::Error> {
    let t = Instant::now();
    ctx.metrics.reconciles.with_label_values(&["restorejob"]).inc();
    let r = restore_job::reconcile(job, ctx.clone()).await;
    ctx.metrics.reconcile_duration.with_label_values(&["restorejob"]).observe(t.elapsed().as_secs_f64());
    r
}

async fn timed_repo(repo: Arc<Repository>, ctx: Arc<Context>) -> Result<Action, super::Error> {
    let t = Instant::now();
    ctx.metrics.reconciles.with_label_values(&["repository"]).inc();
    let r = repository::reconcile(repo, ctx.clone()).await;
    ctx.metrics.reconcile_duration.with_label_values(&["repository"]).observe(t.elapsed().as_secs_f64());
    r
}

async fn timed_policy(p: Arc<PushPolicy>, ctx: Arc<Context>) -> Result<Action, super::Error> {
    let t = Instant::now();
    ctx.metrics.reconciles.with_label_values(&["pushpolicy"]).inc();
    let r = policy::reconcile(p, ctx.clone()).await;
    ctx.metrics.reconcile_duration.with_label_values(&["pushpolicy"]).observe(t.elapsed().as_secs_f64());
    r
}
