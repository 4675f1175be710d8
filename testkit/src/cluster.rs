//! A real Kubernetes control plane for tests: etcd and kube-apiserver (and,
//! on request, kube-controller-manager) built from the official Go modules
//! by `scripts/control-plane.sh build` (the `testenv/` module), started on
//! free loopback ports in a directory of their own and stopped by pid when
//! the [`ControlPlane`] is dropped.
//!
//! There is no kubelet: a test creates Node objects and pods bound to them,
//! and sets pod status through `pods/status` as a kubelet would
//! ([`ControlPlane::node`], [`ControlPlane::running_pod`]).
//!
//! The binaries come from `FAULTLINE_CONTROL_PLANE` (a folder holding
//! `etcd`, `kube-apiserver`, `kube-controller-manager` and a `kubectl` of
//! the same release); scripts/test.sh sets
//! it. `scripts/control-plane.sh up DIR` starts the same control plane for a
//! person, detached, through the `faultline-control-plane` binary.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{
    Api, Client, Config,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};

/// What to start beside etcd and kube-apiserver.
#[derive(Debug, Clone)]
pub struct Options {
    /// kube-controller-manager: namespace deletion, garbage collection,
    /// service-account tokens, ReplicaSets.
    pub controller_manager: bool,
    /// How often kube-apiserver compacts etcd (its default is 5 minutes);
    /// short, so watches meet 410 Gone.
    pub compaction_interval: Option<Duration>,
    /// kube-apiserver's watch cache. Without it watches are served by etcd,
    /// so a resumed watch whose revision was compacted gets 410 Gone (the
    /// cache answers one with the current state instead).
    pub watch_cache: bool,
    /// Write an audit log (`DIR/audit.log`, JSON lines, one per request)
    /// of the requests these users make: what a program asked of the API.
    pub audit_users: Vec<String>,
    /// Keep the processes running when the value is dropped (a person's
    /// `control-plane.sh up`), in a process group of their own.
    pub detach: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            controller_manager: false,
            compaction_interval: None,
            watch_cache: true,
            audit_users: Vec::new(),
            detach: false,
        }
    }
}

/// One process of the control plane.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Option<Child>,
    args: Vec<String>,
}

/// A running control plane; everything stops when it is dropped.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    bin: PathBuf,
    options: Options,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// An admin kubeconfig (system:masters), for kubectl, helm and the CLI.
    pub kubeconfig: PathBuf,
    admin_token: String,
    procs: Vec<Proc>,
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Setup(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{name} did not become ready within {secs} s; the end of its log:\n{log}")]
    NotReady {
        name: &'static str,
        secs: u64,
        log: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        what: what.into(),
        source,
    }
}

/// The folder holding the control plane's binaries, from
/// `FAULTLINE_CONTROL_PLANE`; None (the test skips) only when peers are not
/// required.
pub fn binaries() -> Option<PathBuf> {
    let dir = PathBuf::from(crate::peer_var("FAULTLINE_CONTROL_PLANE")?);
    for name in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
    ] {
        if !dir.join(name).is_file() {
            crate::skip_without_peer(&format!(
                "{} is missing; scripts/control-plane.sh build makes it",
                dir.join(name).display()
            ));
            return None;
        }
    }
    Some(dir)
}

/// 16 random bytes as hex, for bearer tokens.
fn random_token() -> Result<String, Error> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("read /dev/urandom"))?;
    Ok(bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// The last `n` lines of a file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver (and what `options` asks for) in a
    /// fresh temporary folder and waits for `/readyz`. None when the
    /// binaries are missing and peers are not required; panics when they
    /// do not start, with the end of their logs.
    pub async fn start(options: Options) -> Option<ControlPlane> {
        let bin = binaries()?;
        let temp = tempfile::Builder::new()
            .prefix("faultline-cp-")
            .tempdir()
            .expect("a temporary folder");
        let dir = temp.path().to_owned();
        // FAULTLINE_KEEP_CONTROL_PLANE keeps the folder (logs, state) after the test.
        let temp = if std::env::var_os("FAULTLINE_KEEP_CONTROL_PLANE").is_some() {
            let kept = temp.keep();
            tracing::warn!("FAULTLINE_KEEP_CONTROL_PLANE: keeping {}", kept.display());
            None
        } else {
            Some(temp)
        };
        match Self::start_in(&bin, &dir, options, temp).await {
            Ok(cp) => Some(cp),
            Err(e) => panic!("the control plane did not start: {e}"),
        }
    }

    /// Starts the control plane with its state, logs and kubeconfig in `dir`.
    pub async fn start_in(
        bin: &Path,
        dir: &Path,
        options: Options,
        temp: Option<tempfile::TempDir>,
    ) -> Result<ControlPlane, Error> {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        // It holds an admin token and the token signing key: the owner's only.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(format!("chmod {}", dir.display())))?;
        }
        let dir = dir.canonicalize().map_err(io("canonicalize"))?;
        let (etcd_port, peer_port, api_port) =
            (crate::free_port(), crate::free_port(), crate::free_port());
        let admin_token = random_token()?;
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{admin_token},admin,admin-uid,system:masters\n"),
        )
        .map_err(io("write tokens.csv"))?;
        service_account_key(&dir)?;

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = vec![
            "--name=test".into(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=test={peer_url}"),
            // Test data need not survive a power cut; fsync costs seconds.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ];
        let certs = dir.join("certs");
        let mut apiserver = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--cert-dir={}", certs.display()),
            format!("--secure-port={api_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // The `kubernetes` Service's endpoints may not be loopback.
            "--endpoint-reconciler-type=none".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!(
                "--service-account-key-file={}",
                dir.join("sa.pub").display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                dir.join("sa.key").display()
            ),
            "--authorization-mode=Node,RBAC".into(),
            format!("--token-auth-file={}", dir.join("tokens.csv").display()),
            "--allow-privileged=true".into(),
            // Without a controller-manager nobody creates each namespace's
            // `default` ServiceAccount, which this plugin waits for.
            "--disable-admission-plugins=ServiceAccount".into(),
            "--profiling=false".into(),
        ];
        if !options.audit_users.is_empty() {
            let policy = json!({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                "omitStages": ["RequestReceived", "ResponseStarted"],
                "rules": [{"level": "Metadata", "users": options.audit_users}, {"level": "None"}]});
            std::fs::write(dir.join("audit-policy.yaml"), policy.to_string())
                .map_err(io("write the audit policy"))?;
            apiserver.push(format!(
                "--audit-policy-file={}",
                dir.join("audit-policy.yaml").display()
            ));
            apiserver.push(format!(
                "--audit-log-path={}",
                dir.join("audit.log").display()
            ));
        }
        if !options.watch_cache {
            apiserver.push("--watch-cache=false".into());
        }
        if let Some(every) = options.compaction_interval {
            apiserver.push(format!(
                "--etcd-compaction-interval={}s",
                every.as_secs().max(1)
            ));
        }
        let mut cp = ControlPlane {
            url: format!("https://127.0.0.1:{api_port}"),
            kubeconfig: dir.join("kubeconfig"),
            dir,
            _temp: temp,
            bin: bin.to_owned(),
            options,
            admin_token,
            procs: vec![
                Proc {
                    name: "etcd",
                    child: None,
                    args: etcd,
                },
                Proc {
                    name: "kube-apiserver",
                    child: None,
                    args: apiserver,
                },
            ],
        };
        match cp.start_all(etcd_port).await {
            Ok(()) => Ok(cp),
            Err(e) => {
                // Nothing half-started stays behind, detached or not.
                cp.stop_all();
                let _ = std::fs::remove_file(cp.dir.join("pids"));
                Err(e)
            }
        }
    }

    async fn start_all(&mut self, etcd_port: u16) -> Result<(), Error> {
        let cp = self;
        cp.spawn("etcd")?;
        cp.wait_etcd(etcd_port).await?;
        cp.spawn("kube-apiserver")?;
        cp.wait_apiserver().await?;
        if cp.options.controller_manager {
            let kcm = vec![
                format!("--kubeconfig={}", cp.kubeconfig.display()),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", crate::free_port()),
                format!(
                    "--service-account-private-key-file={}",
                    cp.dir.join("sa.key").display()
                ),
                format!("--root-ca-file={}", cp.ca_file().display()),
                // No certificate signing or node IPAM here; and no kubelet
                // renews node leases, so node lifecycle would mark every
                // node unreachable and its pods not ready.
                "--controllers=*,-certificatesigningrequest-signing-controller,-node-ipam-controller,-node-lifecycle-controller,-kube-apiserver-serving-clustertrustbundle-publisher-controller".into(),
                "--concurrent-gc-syncs=5".into(),
            ];
            cp.procs.push(Proc {
                name: "kube-controller-manager",
                child: None,
                args: kcm,
            });
            cp.spawn("kube-controller-manager")?;
        }
        Ok(())
    }

    fn stop_all(&mut self) {
        // The controller-manager first, etcd last: nobody logs a lost peer.
        for name in ["kube-controller-manager", "kube-apiserver", "etcd"] {
            self.kill(name);
        }
    }

    /// The last lines of the logs of what a test started here (controllers,
    /// observers; not the peers'), so a failure in CI says what they did.
    fn print_log_tails(&self) {
        const PEERS: [&str; 3] = ["kube-controller-manager", "kube-apiserver", "etcd"];
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = name.strip_suffix(".log") else {
                continue;
            };
            if PEERS.contains(&stem) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            // Into the failing test's captured output.
            println!("--- last {} lines of {name} ---", tail.len());
            for line in tail {
                println!("{line}");
            }
        }
    }

    /// The folder holding the state, logs and kubeconfigs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The API server's serving certificate (self-signed, with its CA).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("certs").join("apiserver.crt")
    }

    /// The pids of the running processes, by name.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.procs
            .iter()
            .filter_map(|p| Some((p.name, p.child.as_ref()?.id())))
            .collect()
    }

    /// The log file of one process.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn spawn(&mut self, name: &'static str) -> Result<(), Error> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(name))
            .map_err(io(format!("open {name}.log")))?;
        let err = log.try_clone().map_err(io("dup log"))?;
        let detach = self.options.detach;
        let program = self.bin.join(name);
        let proc = self
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::Setup(format!("no process named {name}")))?;
        let mut cmd = Command::new(&program);
        cmd.args(&proc.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        if detach {
            // Its own group: a person's Ctrl-C in the shell does not stop it.
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .map_err(io(format!("start {}", program.display())))?;
        proc.child = Some(child);
        if detach {
            // Written at once, so `down` finds a process even when `up`
            // is interrupted before the server is ready.
            self.write_pids()?;
        }
        Ok(())
    }

    async fn wait_etcd(&mut self, port: u16) -> Result<(), Error> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        let limit = Duration::from_secs(30);
        loop {
            if let Ok((200, body)) = crate::http(addr, "GET", "/health", &[], b"").await
                && String::from_utf8_lossy(&body).contains("true")
            {
                return Ok(());
            }
            self.check_alive("etcd")?;
            if started.elapsed() > limit {
                return Err(self.not_ready("etcd", limit));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn not_ready(&self, name: &'static str, limit: Duration) -> Error {
        Error::NotReady {
            name,
            secs: limit.as_secs(),
            log: tail(&self.log(name), 30),
        }
    }

    fn check_alive(&mut self, name: &'static str) -> Result<(), Error> {
        let log = self.log(name);
        let proc = self.procs.iter_mut().find(|p| p.name == name);
        if let Some(Proc {
            child: Some(child), ..
        }) = proc
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(Error::Setup(format!(
                "{name} exited ({status}); the end of its log:\n{}",
                tail(&log, 30)
            )));
        }
        Ok(())
    }

    /// Waits until kube-apiserver answers `/readyz` (its certificate is
    /// written at start, so the kubeconfig follows it).
    async fn wait_apiserver(&mut self) -> Result<(), Error> {
        let started = Instant::now();
        let limit = Duration::from_secs(90);
        loop {
            if self.ca_file().is_file() {
                self.write_kubeconfig(&self.kubeconfig, "admin", &self.admin_token.clone())?;
                if let Ok(client) = self.client_for(&self.kubeconfig).await {
                    let ready = client
                        .request_text(
                            http::Request::get("/readyz")
                                .body(Vec::new())
                                .map_err(|e| Error::Setup(e.to_string()))?,
                        )
                        .await;
                    if ready.is_ok_and(|t| t.trim() == "ok") {
                        return Ok(());
                    }
                }
            }
            self.check_alive("kube-apiserver")?;
            if started.elapsed() > limit {
                return Err(self.not_ready("kube-apiserver", limit));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Writes a kubeconfig for `user` with this bearer token.
    fn write_kubeconfig(&self, path: &Path, user: &str, token: &str) -> Result<(), Error> {
        let config = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "faultline-test", "cluster": {
                "server": self.url,
                "certificate-authority": self.ca_file(),
            }}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "faultline-test", "user": user, "namespace": "default"}}],
            "current-context": user,
        });
        // JSON is YAML: kubectl, helm and kube read it alike.
        std::fs::write(path, config.to_string()).map_err(io(format!("write {}", path.display())))
    }

    /// A kube client acting as the identity in `kubeconfig`.
    pub async fn client_for_kubeconfig(&self, kubeconfig: &Path) -> Client {
        self.client_for(kubeconfig).await.expect("a client")
    }

    async fn client_for(&self, kubeconfig: &Path) -> Result<Client, Error> {
        let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| Error::Setup(e.to_string()))?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Setup(e.to_string()))?;
        Client::try_from(config).map_err(|e| Error::Setup(e.to_string()))
    }

    /// A kube client acting as the admin.
    pub async fn client(&self) -> Client {
        self.client_for(&self.kubeconfig)
            .await
            .expect("an admin client")
    }

    /// A kubeconfig (in this control plane's folder) acting with `token`,
    /// e.g. a ServiceAccount's from [`ControlPlane::token`].
    pub fn kubeconfig_with_token(&self, user: &str, token: &str) -> PathBuf {
        let path = self.dir.join(format!("kubeconfig-{user}"));
        self.write_kubeconfig(&path, user, token)
            .expect("write a kubeconfig");
        path
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest
    /// API; bound to `pod` (name, in the same namespace) when given, so the
    /// token carries the pod's node as a kubelet-issued one does.
    pub async fn token(&self, namespace: &str, name: &str, pod: Option<&str>) -> String {
        let client = self.client().await;
        let mut spec = json!({"expirationSeconds": 3600});
        if let Some(pod) = pod {
            let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let uid = pods
                .get(pod)
                .await
                .unwrap_or_else(|e| panic!("pod {namespace}/{pod}: {e}"))
                .metadata
                .uid
                .expect("a pod's uid");
            spec["boundObjectRef"] =
                json!({"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": uid});
        }
        let body =
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
        let request = http::Request::post(format!(
            "/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
        ))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).expect("json"))
        .expect("a request");
        let answer: Value = client
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("a token for {namespace}/{name}: {e}"));
        answer["status"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {answer}"))
            .to_owned()
    }

    /// Runs `program` (kubectl, helm, the CLI) with `KUBECONFIG` set to the
    /// admin's kubeconfig.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// kubectl of the same release, built beside the server, as the admin.
    pub fn kubectl(&self) -> Command {
        self.command(self.bin.join("kubectl"))
    }

    /// `kubectl apply -f` of `yaml` (written into this control plane's
    /// folder), as a user applies an Experiment; panics with kubectl's
    /// error when it refuses.
    pub fn apply(&self, yaml: &str) {
        if let Err(e) = self.apply_as(None, yaml) {
            panic!("kubectl apply: {e}");
        }
    }

    /// `kubectl apply -f` of `yaml` as the user of `kubeconfig` (the
    /// administrator's when None): Err with kubectl's error when refused.
    pub fn apply_as(&self, kubeconfig: Option<&Path>, yaml: &str) -> Result<(), String> {
        let path = self.dir.join("applied.yaml");
        std::fs::write(&path, yaml).expect("write the manifest");
        let mut cmd = self.kubectl();
        if let Some(k) = kubeconfig {
            cmd.arg("--kubeconfig").arg(k);
        }
        let out = cmd
            .args(["apply", "-f"])
            .arg(&path)
            .output()
            .expect("run kubectl");
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// One running pod labelled `app: APP` on each of `nodes`, named
    /// `APP-0`, `APP-1`… with IPs 10.0.0.1, 10.0.0.2…; their uids.
    pub async fn pods_on(&self, namespace: &str, app: &str, nodes: &[&str]) -> Vec<String> {
        let mut uids = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let uid = self
                .running_pod(
                    namespace,
                    &format!("{app}-{i}"),
                    json!({"app": app}),
                    node,
                    &format!("10.0.0.{}", i + 1),
                )
                .await;
            uids.push(uid);
        }
        uids
    }

    /// A namespace, opted in to faults (`faultline.dev/enabled=true`) or not.
    pub async fn namespace(&self, name: &str, opted_in: bool) {
        let labels = if opted_in {
            json!({"faultline.dev/enabled": "true"})
        } else {
            json!({})
        };
        let api: Api<Namespace> = Api::all(self.client().await);
        let object = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}});
        api.patch(name, &apply_params(), &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("namespace {name}: {e}"));
    }

    /// A Node object, Ready, as a kubelet would register it.
    pub async fn node(&self, name: &str) {
        let api: Api<Node> = Api::all(self.client().await);
        let object = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
        api.patch(name, &apply_params(), &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("node {name}: {e}"));
        let status = json!({"apiVersion": "v1", "kind": "Node", "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "a test plays the kubelet"}]}});
        api.patch_status(name, &apply_params(), &Patch::Apply(&status))
            .await
            .unwrap_or_else(|e| panic!("node {name} status: {e}"));
    }

    /// A pod bound to `node` and Running with `ip`, as the scheduler and a
    /// kubelet would leave it; its uid.
    pub async fn running_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: Value,
        node: &str,
        ip: &str,
    ) -> String {
        self.pod_with(namespace, name, labels, node, ip, None).await
    }

    /// As [`ControlPlane::running_pod`], running as ServiceAccount
    /// `service_account` (a token can then be bound to it).
    pub async fn pod_with(
        &self,
        namespace: &str,
        name: &str,
        labels: Value,
        node: &str,
        ip: &str,
        service_account: Option<&str>,
    ) -> String {
        let extra = match service_account {
            Some(sa) => json!({"serviceAccountName": sa}),
            None => json!({}),
        };
        self.pod_with_spec(namespace, name, labels, node, ip, extra)
            .await
    }

    /// As [`ControlPlane::running_pod`], with these fields added to its
    /// spec (`{"hostNetwork": true}`).
    pub async fn pod_with_spec(
        &self,
        namespace: &str,
        name: &str,
        labels: Value,
        node: &str,
        ip: &str,
        extra: Value,
    ) -> String {
        let api: Api<Pod> = Api::namespaced(self.client().await, namespace);
        let mut spec = json!({"nodeName": node,
            "containers": [{"name": "main", "image": "registry.invalid/test:1"}]});
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        let object: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": spec}))
        .expect("a pod");
        let created = api
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("pod {namespace}/{name}: {e}"));
        self.set_pod_running(namespace, name, ip).await;
        created.metadata.uid.expect("a pod's uid")
    }

    /// Sets a pod's status to Running and Ready with `ip`, as its kubelet.
    pub async fn set_pod_running(&self, namespace: &str, name: &str, ip: &str) {
        let api: Api<Pod> = Api::namespaced(self.client().await, namespace);
        let now = jiff::Timestamp::now().to_string();
        let status = json!({"apiVersion": "v1", "kind": "Pod", "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1",
            "startTime": now,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            "containerStatuses": [{"name": "main", "ready": true, "restartCount": 0,
                "image": "registry.invalid/test:1", "imageID": "",
                "state": {"running": {"startedAt": now}}}]}});
        api.patch_status(name, &apply_params(), &Patch::Apply(&status))
            .await
            .unwrap_or_else(|e| panic!("pod {namespace}/{name} status: {e}"));
    }

    /// Deletes a pod as a user and then its kubelet do: a graceful delete
    /// marks it terminating; the kubelet, its containers stopped, removes
    /// it with a grace period of 0.
    pub async fn delete_pod(&self, namespace: &str, name: &str) {
        let api: Api<Pod> = Api::namespaced(self.client().await, namespace);
        api.delete(name, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("delete pod {namespace}/{name}: {e}"));
        match api
            .delete(name, &kube::api::DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => panic!("remove pod {namespace}/{name}: {e}"),
        }
    }

    /// Stops kube-apiserver (SIGKILL), leaving etcd running.
    pub fn stop_apiserver(&mut self) {
        self.kill("kube-apiserver");
    }

    /// Starts kube-apiserver again on the same port, state and certificate,
    /// and waits until it is ready.
    pub async fn start_apiserver(&mut self) {
        self.spawn("kube-apiserver").expect("start kube-apiserver");
        if let Err(e) = self.wait_apiserver().await {
            panic!("kube-apiserver did not come back: {e}");
        }
    }

    fn kill(&mut self, name: &str) {
        if let Some(proc) = self.procs.iter_mut().find(|p| p.name == name)
            && let Some(mut child) = proc.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Writes each process's pid to `DIR/pids` (name pid per line), for
    /// `faultline-control-plane down`.
    pub fn write_pids(&self) -> Result<(), Error> {
        let text: String = self
            .pids()
            .iter()
            .map(|(name, pid)| format!("{name} {pid}\n"))
            .collect();
        std::fs::write(self.dir.join("pids"), text).map_err(io("write pids"))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tails();
        }
        if !self.options.detach {
            self.stop_all();
        }
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply("faultline-test").force()
}

/// An ECDSA key pair for signing ServiceAccount tokens: `sa.key`, `sa.pub`.
fn service_account_key(dir: &Path) -> Result<(), Error> {
    let key = dir.join("sa.key");
    let run = |args: &[&std::ffi::OsStr]| -> Result<(), Error> {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .map_err(io("run openssl (Debian package openssl)"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Setup(format!(
                "openssl {:?} failed: {}",
                args,
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    };
    run(&[
        "genpkey".as_ref(),
        "-algorithm".as_ref(),
        "EC".as_ref(),
        "-pkeyopt".as_ref(),
        "ec_paramgen_curve:P-256".as_ref(),
        "-out".as_ref(),
        key.as_os_str(),
    ])?;
    run(&[
        "pkey".as_ref(),
        "-in".as_ref(),
        key.as_os_str(),
        "-pubout".as_ref(),
        "-out".as_ref(),
        dir.join("sa.pub").as_os_str(),
    ])
}

/// Stops what `faultline-control-plane up DIR` started, from `DIR/pids`,
/// the last started first: SIGTERM, then SIGKILL after five seconds. A pid
/// whose command line does not name DIR (reused since) is left alone.
pub fn stop_detached(dir: &Path) -> Result<usize, Error> {
    let text = std::fs::read_to_string(dir.join("pids"))
        .map_err(io(format!("read {}", dir.join("pids").display())))?;
    let dir = dir.canonicalize().map_err(io("canonicalize"))?;
    let mut stopped = 0;
    let mut live: Vec<rustix::process::Pid> = Vec::new();
    for line in text.lines().rev() {
        let Some((_, pid)) = line.split_once(' ') else {
            continue;
        };
        let Some(pid) = pid
            .trim()
            .parse::<i32>()
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        let cmdline =
            std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero())).unwrap_or_default();
        // Each process's arguments name a file in DIR.
        if !String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
            continue;
        }
        if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_ok() {
            live.push(pid);
            stopped += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && live.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in live {
        if alive(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    let _ = std::fs::remove_file(dir.join("pids"));
    Ok(stopped)
}

fn alive(pid: rustix::process::Pid) -> bool {
    rustix::process::test_kill_process(pid).is_ok()
}

/// The Helm chart as `helm install faultline charts/faultline -n faultline`
/// would leave it: `helm template` (default values, CRDs included) applied
/// with `kubectl apply --server-side`.
#[derive(Debug, Clone)]
pub struct Chart {
    /// The release's namespace.
    pub namespace: String,
    /// The release's name; with "faultline" objects are named
    /// `faultline-controller`, `faultline-agent`.
    pub release: String,
}

impl Chart {
    pub fn controller_account(&self) -> String {
        format!("{}-controller", self.fullname())
    }

    pub fn agent_account(&self) -> String {
        format!("{}-agent", self.fullname())
    }

    pub fn observer_account(&self) -> String {
        format!("{}-observer", self.fullname())
    }

    pub fn fullname(&self) -> String {
        if self.release.contains("faultline") {
            self.release.clone()
        } else {
            format!("{}-faultline", self.release)
        }
    }
}

impl ControlPlane {
    /// Renders `charts/faultline` (default values) with helm
    /// (`FAULTLINE_HELM`, else `helm`) and applies it; panics with helm's
    /// or kubectl's output when either fails.
    pub async fn install_chart(&self) -> Chart {
        let chart = Chart {
            namespace: "faultline".into(),
            release: "faultline".into(),
        };
        self.namespace(&chart.namespace, false).await;
        let helm = std::env::var("FAULTLINE_HELM").unwrap_or_else(|_| "helm".into());
        let out = Command::new(&helm)
            .arg("template")
            .arg(&chart.release)
            .arg(repo().join("charts/faultline"))
            .args(["--namespace", &chart.namespace, "--include-crds"])
            .output()
            .unwrap_or_else(|e| panic!("run {helm}: {e}"));
        assert!(
            out.status.success(),
            "helm template: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let manifest = self.dir.join("chart.yaml");
        std::fs::write(&manifest, &out.stdout).expect("write the rendered chart");
        let applied = self
            .kubectl()
            .args(["apply", "--server-side", "--field-manager=helm", "-f"])
            .arg(&manifest)
            .output()
            .expect("run kubectl");
        assert!(
            applied.status.success(),
            "kubectl apply of the rendered chart: {}{}",
            String::from_utf8_lossy(&applied.stdout),
            String::from_utf8_lossy(&applied.stderr)
        );
        let established = self
            .kubectl()
            .args([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/experiments.faultline.dev",
                "crd/nodefaults.faultline.dev",
            ])
            .output()
            .expect("run kubectl");
        assert!(
            established.status.success(),
            "the CRDs were not established: {}",
            String::from_utf8_lossy(&established.stderr)
        );
        chart
    }

    /// A kubeconfig acting as the chart's controller ServiceAccount (a
    /// TokenRequest token, as its pod would mount).
    pub async fn controller_kubeconfig(&self, chart: &Chart) -> PathBuf {
        let token = self
            .token(&chart.namespace, &chart.controller_account(), None)
            .await;
        self.kubeconfig_with_token("controller", &token)
    }

    /// A kubeconfig acting as the chart's observer ServiceAccount.
    pub async fn observer_kubeconfig(&self, chart: &Chart) -> PathBuf {
        let token = self
            .token(&chart.namespace, &chart.observer_account(), None)
            .await;
        self.kubeconfig_with_token("observer", &token)
    }

    /// A kubeconfig acting as the chart's agent on `node`: a pod of the
    /// agent's ServiceAccount is bound to the node (as the DaemonSet's would
    /// be) and the token is bound to that pod, so it carries the node's
    /// name as a kubelet-mounted one does.
    pub async fn agent_kubeconfig(&self, chart: &Chart, node: &str) -> PathBuf {
        let pod = format!("{}-{node}", chart.agent_account());
        self.pod_with(
            &chart.namespace,
            &pod,
            json!({"app.kubernetes.io/component": "agent"}),
            node,
            "10.244.255.1",
            Some(&chart.agent_account()),
        )
        .await;
        let token = self
            .token(&chart.namespace, &chart.agent_account(), Some(&pod))
            .await;
        self.kubeconfig_with_token(&format!("agent-{node}"), &token)
    }
}

/// The workspace's root folder.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// An API for one of Faultline's kinds (`Experiment` in `namespace`,
/// cluster-wide `NodeFaults`), as untyped objects: what tests read back.
pub fn faultline_api(client: &Client, kind: &str, namespace: Option<&str>) -> Api<DynamicObject> {
    let plural = match kind {
        "Experiment" => "experiments",
        _ => "nodefaults",
    };
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("faultline.dev", "v1alpha1", kind),
        plural,
    );
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// Polls `f` until it yields a value, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {} s waiting for {what}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `api` no longer holds `name` (a finalizer may hold it).
pub async fn gone<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} gone"), timeout, || async {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// Waits until a program's `/readyz` at `addr` answers 200.
pub async fn ready(addr: std::net::SocketAddr, timeout: Duration) {
    eventually(&format!("{addr}/readyz"), timeout, || async {
        let (status, _) = crate::http(addr, "GET", "/readyz", &[], b"").await.ok()?;
        (status == 200).then_some(())
    })
    .await;
}

/// A program this workspace builds (`faultline`, `faultline-controller`,
/// `faultline-agent`), from the target folder the running test was built
/// into: Cargo names only a package's own binaries to its tests, and
/// `cargo test --workspace` / nextest build every binary first.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/debug/deps/TEST-HASH → target/debug/NAME
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .expect("a target folder");
    assert!(
        path.is_file(),
        "{} is not built; `cargo build --workspace` (scripts/test.sh) builds it",
        path.display()
    );
    path
}

impl ControlPlane {
    /// The `faultline-controller` binary acting with `kubeconfig`,
    /// leader-elected in the chart's namespace as `identity`, stepping every
    /// 200 ms; its log goes to `DIR/<identity>.log`. Killed when dropped;
    /// with the address of its /metrics, /healthz and /readyz.
    pub fn start_controller(
        &self,
        kubeconfig: &Path,
        identity: &str,
        extra: &[&str],
    ) -> (crate::KillOnDrop, std::net::SocketAddr) {
        self.start_controller_with_env(kubeconfig, identity, extra, &[])
    }

    /// As [`ControlPlane::start_controller`], with more environment (e.g.
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn start_controller_with_env(
        &self,
        kubeconfig: &Path,
        identity: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> (crate::KillOnDrop, std::net::SocketAddr) {
        let log = std::fs::File::create(self.log(identity)).expect("a log file");
        let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        // A profiler to run it under, e.g. `heaptrack -o /tmp/controller`
        // (FAULTLINE_CONTROLLER_WRAPPER, for the scale benchmark).
        let wrapper = std::env::var("FAULTLINE_CONTROLLER_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(words).arg(workspace_bin("faultline-controller"));
                c
            }
            None => Command::new(workspace_bin("faultline-controller")),
        };
        let child = command
            .env("KUBECONFIG", kubeconfig)
            // Only what the test says: nothing of the caller's setting.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("FAULTLINE_OBSERVER")
            .env_remove("FAULTLINE_LEADER_ELECT")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .env("RUST_LOG", "info,faultline_controller=debug")
            .args(["--lease-namespace", "faultline", "--identity", identity])
            .args(["--tick", "200ms", "--check-every", "200ms"])
            .arg("--metrics-addr")
            .arg(metrics.to_string())
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start faultline-controller");
        (crate::KillOnDrop(child), metrics)
    }
}
