//! A Kubernetes API server for tests that knows only Pods: get, list (by label), create
//! and delete in namespaces, as the node plugin's mount-pod launcher calls them. What a
//! created pod *does* is up to a [`PodRuntime`]: nothing (API-level tests), or a real
//! container (the node harness turns pods into `docker run`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Runs the pods the API accepts.
pub trait PodRuntime: Send + Sync + 'static {
    /// Starts `pod` (a Pod object as JSON); an error fails the create with 500.
    fn start(&self, pod: &Value) -> Result<(), String>;
    /// Stops and removes the pod named `name` (synchronously: the pod is gone after).
    fn remove(&self, namespace: &str, name: &str);
}

/// A runtime that runs nothing (for checking the objects a client creates).
pub struct NoRuntime;

impl PodRuntime for NoRuntime {
    fn start(&self, _pod: &Value) -> Result<(), String> {
        Ok(())
    }
    fn remove(&self, _namespace: &str, _name: &str) {}
}

/// One request the API answered, for assertions.
#[derive(Debug, Clone)]
pub struct ApiCall {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub uri: String,
}

#[derive(Default)]
struct State {
    /// (namespace, name) -> pod.
    pods: BTreeMap<(String, String), Value>,
    calls: Vec<ApiCall>,
}

/// The API server: plain HTTP on 127.0.0.1, no authentication.
pub struct FakeKubeApi {
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

fn status(code: u16, reason: &str, message: String) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

fn labels_match(pod: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        pod["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| urlencoding::decode(v).map(|c| c.into_owned()).unwrap_or_default())
    })
}

fn handle(
    state: &Mutex<State>,
    runtime: &dyn PodRuntime,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> (u16, Value) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // api/v1/namespaces/{ns}/pods[/{name}]
    let (ns, name) = match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "pods"] => (ns.to_string(), None),
        ["api", "v1", "namespaces", ns, "pods", name] => (ns.to_string(), Some(name.to_string())),
        _ => return status(404, "NotFound", format!("this test API serves only pods, not {path}")),
    };
    match (method, name) {
        ("GET", Some(name)) => match state.lock().pods.get(&(ns.clone(), name.clone())) {
            Some(p) => (200, p.clone()),
            None => status(404, "NotFound", format!("pods \"{name}\" not found")),
        },
        ("GET", None) => {
            let selector = query_param(query, "labelSelector").unwrap_or_default();
            let items: Vec<Value> = state
                .lock()
                .pods
                .iter()
                .filter(|((n, _), p)| *n == ns && labels_match(p, &selector))
                .map(|(_, p)| p.clone())
                .collect();
            (200, json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}))
        }
        ("POST", None) => {
            let mut pod: Value = match serde_json::from_slice(body) {
                Ok(p) => p,
                Err(e) => return status(400, "BadRequest", format!("pod: {e}")),
            };
            let Some(name) = pod["metadata"]["name"].as_str().map(str::to_string) else {
                return status(422, "Invalid", "metadata.name is required".into());
            };
            if state.lock().pods.contains_key(&(ns.clone(), name.clone())) {
                return status(409, "AlreadyExists", format!("pods \"{name}\" already exists"));
            }
            pod["metadata"]["namespace"] = json!(ns);
            pod["metadata"]["uid"] = json!(format!("uid-{name}"));
            pod["metadata"]["resourceVersion"] = json!("1");
            pod["status"] = json!({"phase": "Running"});
            if let Err(e) = runtime.start(&pod) {
                return status(500, "InternalError", format!("starting pod {name}: {e}"));
            }
            state.lock().pods.insert((ns, name), pod.clone());
            (201, pod)
        }
        ("DELETE", Some(name)) => {
            let removed = state.lock().pods.remove(&(ns.clone(), name.clone()));
            match removed {
                Some(p) => {
                    runtime.remove(&ns, &name);
                    (200, p)
                }
                None => status(404, "NotFound", format!("pods \"{name}\" not found")),
            }
        }
        _ => status(405, "MethodNotAllowed", format!("{method} {path}")),
    }
}

impl FakeKubeApi {
    /// Starts the server with `runtime` running its pods.
    pub async fn start(runtime: Arc<dyn PodRuntime>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (st, rt) = (st.clone(), runtime.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (st, rt) = (st.clone(), rt.clone());
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let query = req.uri().query().unwrap_or("").to_string();
                            st.lock().calls.push(ApiCall { method: method.clone(), uri: req.uri().to_string() });
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let (code, value) = tokio::task::spawn_blocking(move || {
                                handle(&st, rt.as_ref(), &method, &path, &query, &body)
                            })
                            .await
                            .unwrap_or_else(|e| status(500, "InternalError", e.to_string()));
                            let resp = http::Response::builder()
                                .status(code)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(value.to_string())))
                                .expect("valid response");
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = conn.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Ok(FakeKubeApi { url, state, task })
    }

    /// Puts a pod in the store without running it (the node plugin's own pod).
    pub fn insert(&self, pod: Value) {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
        self.state.lock().pods.insert((ns, name), pod);
    }

    /// The pod `namespace/name`, if it exists.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        self.state.lock().pods.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// Every pod whose labels match `selector` (`k=v,k2=v2`).
    pub fn pods(&self, selector: &str) -> Vec<Value> {
        self.state.lock().pods.values().filter(|p| labels_match(p, selector)).cloned().collect()
    }

    /// Requests answered so far.
    pub fn calls(&self) -> Vec<ApiCall> {
        self.state.lock().calls.clone()
    }

    /// A kubeconfig file's content that points a client at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: s3vol\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.url
        )
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}
