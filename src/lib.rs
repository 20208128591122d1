//! push-operator: backs up application volumes to object storage with content-defined
//! deduplication. The store engine lives in [`store`] and knows nothing of Kubernetes.

pub mod api;
pub mod controller;
pub mod location;
pub mod metrics;
pub mod progress;
pub mod store;
pub mod worker;
