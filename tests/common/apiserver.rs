//! The real Kubernetes apiextensions-apiserver on a real etcd (built by e2e/apiserver/build.sh),
//! started on free loopback ports for one test binary and killed with it.
#![allow(dead_code)]

use crate::common::{free_port, spawn_tied};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct ApiServer {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub url: String,
    pids: Vec<u32>,
}

fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PUSH_OPERATOR_APISERVER_DIR") {
        return d.into();
    }
    let cache = std::env::var_os("PUSH_OPERATOR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/push-operator"));
    let d = cache.join("apiserver/current");
    assert!(
        d.join("crdserver").exists() && d.join("etcd").exists(),
        "no API server binaries in {}: run e2e/apiserver/build.sh (scripts/test does)",
        d.display()
    );
    d
}

impl ApiServer {
    pub fn start() -> ApiServer {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pki = d.join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        let sh = format!(
            "set -e; cd {p}; \
             openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -keyout ca.key -out ca.crt -subj /CN=test-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign; \
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj /CN=localhost; \
             printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth\\nkeyUsage=critical,digitalSignature\\n' > server.ext; \
             openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.crt",
            p = pki.display()
        );
        let o = Command::new("sh").arg("-c").arg(&sh).output().unwrap();
        assert!(o.status.success(), "openssl: {}", String::from_utf8_lossy(&o.stderr));
        std::fs::write(
            d.join("core-kubeconfig"),
            "apiVersion: v1\nkind: Config\nclusters: [{name: none, cluster: {server: \"http://127.0.0.1:1\"}}]\ncontexts: [{name: none, context: {cluster: none, user: none}}]\ncurrent-context: none\nusers: [{name: none, user: {token: none}}]\n",
        )
        .unwrap();
        let (etcd_port, peer_port, port) = (free_port(), free_port(), free_port());
        let log = |name: &str| std::fs::File::create(d.join(name)).unwrap();
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.args([
            "--name=default".to_string(),
            format!("--data-dir={}", d.join("etcd").display()),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
            "--unsafe-no-fsync".into(),
        ])
        .stdin(Stdio::null())
        .stdout(log("etcd.log"))
        .stderr(log("etcd.err"));
        let etcd_pid = spawn_tied(etcd);
        let mut server = Command::new(bin.join("crdserver"));
        server
            .args([
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                format!("--tls-cert-file={}", pki.join("server.crt").display()),
                format!("--tls-private-key-file={}", pki.join("server.key").display()),
                "--authentication-skip-lookup".into(),
                format!("--authentication-kubeconfig={}", d.join("core-kubeconfig").display()),
                format!("--kubeconfig={}", d.join("core-kubeconfig").display()),
                "--enable-priority-and-fairness=false".into(),
                "--disable-admission-plugins=NamespaceLifecycle,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,MutatingAdmissionPolicy".into(),
            ])
            .stdin(Stdio::null())
            .stdout(log("crdserver.log"))
            .stderr(log("crdserver.err"));
        let server_pid = spawn_tied(server);
        let url = format!("https://127.0.0.1:{port}");
        let kubeconfig = d.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: test, cluster: {{server: \"{url}\", certificate-authority: \"{ca}\"}}}}]\ncontexts: [{{name: test, context: {{cluster: test, user: anon, namespace: default}}}}]\ncurrent-context: test\nusers: [{{name: anon, user: {{username: anonymous, password: unused}}}}]\n",
                ca = pki.join("ca.crt").display()
            ),
        )
        .unwrap();
        let s = ApiServer { dir, kubeconfig, url, pids: vec![server_pid, etcd_pid] };
        s.wait_live();
        s
    }

    fn wait_live(&self) {
        let started = Instant::now();
        loop {
            let o = Command::new("curl")
                .args(["-sf", "--cacert"])
                .arg(self.dir.path().join("pki/ca.crt"))
                .arg(format!("{}/livez", self.url))
                .output()
                .unwrap();
            if o.status.success() {
                return;
            }
            if started.elapsed() > Duration::from_secs(90) {
                let err = std::fs::read_to_string(self.dir.path().join("crdserver.err")).unwrap_or_default();
                panic!("the API server did not come up in 90 s:\n{}", &err[err.len().saturating_sub(3000)..]);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.unwrap();
        kube::Client::try_from(cfg).unwrap()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for pid in &self.pids {
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// A schemaless CRD standing in for a built-in API group the test server does not serve
/// (coordination.k8s.io Leases, events.k8s.io Events, storage.k8s.io VolumeAttachments, ...).
pub fn standin_crd(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{group}"),
            "annotations": {"api-approved.kubernetes.io": "unapproved, test stand-in for a built-in API"}
        },
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
            "scope": if namespaced { "Namespaced" } else { "Cluster" },
            "versions": [{
                "name": version, "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}}
            }]
        }
    })
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
