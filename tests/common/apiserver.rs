//! The real Kubernetes control plane (e2e/cluster/up: etcd, kube-apiserver, controller-manager,
//! scheduler), started on free loopback ports for one test binary and stopped when it exits.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct ApiServer {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

impl ApiServer {
    /// `e2e/cluster/up` in a temporary directory, stopped when this test binary exits.
    pub fn start() -> ApiServer {
        let dir = tempfile::tempdir().unwrap();
        let up = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/cluster/up");
        let o = Command::new(up)
            .arg("--dir")
            .arg(dir.path().join("cluster"))
            .arg("--watch-pid")
            .arg(std::process::id().to_string())
            .arg("--purge")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{up}: {e}"));
        let out = String::from_utf8_lossy(&o.stdout);
        let last = out.lines().last().unwrap_or_default();
        assert!(
            o.status.success() && last.starts_with("KUBECONFIG="),
            "e2e/cluster/up failed (it builds the control plane once; see its --help):\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        ApiServer { kubeconfig: PathBuf::from(&last["KUBECONFIG=".len()..]), dir }
    }

    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.unwrap();
        kube::Client::try_from(cfg).unwrap()
    }
}

/// Creates namespace `ns` (kept if it exists) and waits for its default ServiceAccount.
pub async fn ensure_namespace(client: &kube::Client, ns: &str) {
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    let obj: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
    match api.create(&Default::default(), &obj).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("namespace {ns}: {e}"),
    }
    let sas: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    while sas.get_opt("default").await.unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(30), "no ServiceAccount {ns}/default after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates CRDs (409 is fine) and waits until each is Established.
pub async fn install_crds(client: &kube::Client, crds: Vec<serde_json::Value>) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    for c in crds {
        let crd: CustomResourceDefinition = serde_json::from_value(c).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        match api.create(&Default::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("CRD {name} rejected: {e}"),
        }
        let started = Instant::now();
        loop {
            let got = api.get(&name).await.unwrap();
            let conds = got.status.and_then(|s| s.conditions).unwrap_or_default();
            if conds.iter().any(|c| c.type_ == "Established" && c.status == "True") {
                assert!(
                    !conds.iter().any(|c| c.type_ == "NonStructuralSchema" && c.status == "True"),
                    "CRD {name} is not structural: {conds:?}"
                );
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "CRD {name} not established: {conds:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Our CRDs, as `push-operator crds` prints them.
pub fn our_crds() -> Vec<serde_json::Value> {
    push_operator::api::crds().into_iter().map(|c| serde_json::to_value(c).unwrap()).collect()
}
