//! The backend conformance suite against the local directory backend (tests/s3.rs runs it
//! against SeaweedFS).

mod common;
#[path = "common/conformance.rs"]
mod conformance;

use push_operator::store::backend::fs::FsBackend;
use push_operator::store::backend::retry::{RetryPolicy, Retrying};
use std::sync::Arc;

#[test]
fn local_directory_backend_conforms() {
    let tmp = tempfile::tempdir().unwrap();
    conformance::run_suite(Arc::new(FsBackend::new(tmp.path().join("store"))));
}

#[test]
fn retrying_wrapper_conforms() {
    let tmp = tempfile::tempdir().unwrap();
    conformance::run_suite(Arc::new(Retrying::new(FsBackend::new(tmp.path()), RetryPolicy::default())));
}
