//! The container runtime of a real node, over CRI (`runtime.v1`) on the node's unix socket.
//!
//! Socket discovery follows upstream (spec C.1): with `--socket-file` only that socket under the
//! host's `/var/run` mount is tried; otherwise the known sockets in order, the first that answers
//! `Version` serving every probe.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AuthConfig, ContainerFilter, ContainerState, ContainerStatusRequest, ExecSyncRequest, ImageSpec,
    ListContainersRequest, ListImagesRequest, PullImageRequest, VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use super::runtime::{ContainerInfo, ContainerRuntime, ExecOutcome, ImageRuntime, RegistryAuth, RuntimeError};

/// The label the kubelet puts on every container with its pod's uid.
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";

/// The sockets tried in order under the host's `/var/run` when none is named.
pub const KNOWN_SOCKETS: &[&str] = &[
    "containerd.sock",
    "containerd/containerd.sock",
    "crio.sock",
    "crio/crio.sock",
    "cri-dockerd.sock",
    "cri-dockerd/cri-dockerd.sock",
];

/// How long connecting to a runtime may take (upstream: 5 s for the runtime service).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// CRI runtime and image service clients on one connection. Cloning shares it.
#[derive(Clone, Debug)]
pub struct CriRuntime {
    client: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

fn rpc_error(what: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError(format!("{what}: {e}"))
}

impl CriRuntime {
    /// Connects to the runtime on `socket` and checks it answers `Version`.
    pub async fn connect(socket: &Path) -> Result<Self, RuntimeError> {
        let path = socket.to_path_buf();
        // The URI is required by the API and ignored: the connector dials the socket.
        let endpoint = Endpoint::try_from("http://[::1]:50051")
            .map_err(|e| rpc_error("endpoint", e))?
            .connect_timeout(CONNECT_TIMEOUT);
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
            }))
            .await
            .map_err(|e| rpc_error(&format!("connecting to {}", socket.display()), e))?;
        let mut client = RuntimeServiceClient::new(channel.clone());
        client
            .version(VersionRequest { version: "0.1.0".into() })
            .await
            .map_err(|e| rpc_error(&format!("Version on {}", socket.display()), e))?;
        Ok(CriRuntime { client, images: ImageServiceClient::new(channel) })
    }

    /// The runtime under `host_var_run`: `socket_file` if named, else the first known socket
    /// that answers.
    pub async fn discover(host_var_run: &Path, socket_file: Option<&str>) -> Result<(PathBuf, Self), RuntimeError> {
        let candidates: Vec<PathBuf> = match socket_file {
            Some(name) => vec![host_var_run.join(name)],
            None => KNOWN_SOCKETS.iter().map(|s| host_var_run.join(s)).collect(),
        };
        let mut tried = Vec::new();
        for path in candidates {
            match CriRuntime::connect(&path).await {
                Ok(rt) => return Ok((path, rt)),
                Err(e) => tried.push(e.0),
            }
        }
        Err(RuntimeError(format!("no CRI runtime answered under {}: {}", host_var_run.display(), tried.join("; "))))
    }
}

impl ContainerRuntime for CriRuntime {
    fn container(&self, pod_uid: &str, container: &str) -> BoxFuture<'_, Result<Option<ContainerInfo>, RuntimeError>> {
        let mut client = self.client.clone();
        let filter = ContainerFilter {
            label_selector: [(POD_UID_LABEL.to_string(), pod_uid.to_string())].into(),
            ..Default::default()
        };
        let name = container.to_string();
        Box::pin(async move {
            let listed = client
                .list_containers(ListContainersRequest { filter: Some(filter) })
                .await
                .map_err(|e| rpc_error("ListContainers", e))?
                .into_inner();
            // The newest attempt of the container (a restarted one leaves the old behind).
            let Some(newest) = listed
                .containers
                .into_iter()
                .filter(|c| c.metadata.as_ref().is_some_and(|m| m.name == name))
                .max_by_key(|c| c.created_at)
            else {
                return Ok(None);
            };
            let status = client
                .container_status(ContainerStatusRequest { container_id: newest.id.clone(), verbose: false })
                .await
                .map_err(|e| rpc_error("ContainerStatus", e))?
                .into_inner()
                .status
                .ok_or_else(|| RuntimeError(format!("ContainerStatus of {} had no status", newest.id)))?;
            let started_at = (status.started_at > 0)
                .then(|| Timestamp::from_nanosecond(i128::from(status.started_at)).ok())
                .flatten();
            Ok(Some(ContainerInfo {
                id: newest.id,
                name,
                running: status.state == ContainerState::ContainerRunning as i32,
                started_at,
            }))
        })
    }

    fn exec_sync(
        &self,
        container_id: &str,
        command: &[String],
        timeout: Duration,
    ) -> BoxFuture<'_, Result<ExecOutcome, RuntimeError>> {
        let mut client = self.client.clone();
        let request = ExecSyncRequest {
            container_id: container_id.to_string(),
            cmd: command.to_vec(),
            timeout: timeout.as_secs().max(1) as i64,
        };
        Box::pin(async move {
            let mut request = tonic::Request::new(request);
            // The runtime enforces the timeout; the deadline is only for one that does not answer.
            request.set_timeout(timeout + Duration::from_secs(2));
            match client.exec_sync(request).await {
                Ok(r) => {
                    let r = r.into_inner();
                    Ok(ExecOutcome::Exited {
                        exit_code: r.exit_code,
                        stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
                        stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
                    })
                }
                Err(s) if s.code() == tonic::Code::DeadlineExceeded => Ok(ExecOutcome::TimedOut),
                Err(s) => Err(rpc_error("ExecSync", s)),
            }
        })
    }
}

impl ImageRuntime for CriRuntime {
    fn image_id(&self, reference: &str) -> BoxFuture<'_, Result<Option<String>, RuntimeError>> {
        let mut images = self.images.clone();
        let reference = reference.to_string();
        Box::pin(async move {
            // Every image, as upstream: a filter by reference is not matched the same way by every
            // runtime, a repo tag is.
            let listed = images
                .list_images(ListImagesRequest { filter: None })
                .await
                .map_err(|e| rpc_error("ListImages", e))?
                .into_inner();
            Ok(listed.images.into_iter().find(|i| i.repo_tags.contains(&reference)).map(|i| i.id))
        })
    }

    fn pull_image(&self, reference: &str, auth: Option<&RegistryAuth>) -> BoxFuture<'_, Result<String, RuntimeError>> {
        let mut images = self.images.clone();
        let request = PullImageRequest {
            image: Some(ImageSpec { image: reference.to_string(), ..Default::default() }),
            auth: auth.map(|a| AuthConfig {
                username: a.username.clone(),
                password: a.password.clone(),
                auth: a.auth.clone(),
                server_address: a.server_address.clone(),
                ..Default::default()
            }),
            sandbox_config: None,
        };
        Box::pin(async move {
            let pulled = images.pull_image(request).await.map_err(|e| rpc_error("PullImage", e))?;
            Ok(pulled.into_inner().image_ref)
        })
    }
}

/// An in-process CRI runtime service for tests: containers per pod uid, scripted execs.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use k8s_cri::v1::image_service_server::{ImageService, ImageServiceServer};
    use k8s_cri::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
    use k8s_cri::v1::*;
    use tonic::{Request, Response, Status};

    /// A container the fake knows.
    #[derive(Clone)]
    pub struct FakeContainer {
        pub id: String,
        pub pod_uid: String,
        pub name: String,
        pub created_at: i64,
        pub started_at: i64,
        pub state: ContainerState,
    }

    /// A scripted exec: output, exit code and how long it takes.
    #[derive(Clone, Default)]
    pub struct FakeExec {
        pub exit_code: i32,
        pub stdout: String,
        pub stderr: String,
        pub delay: Duration,
    }

    /// An image the fake holds: id and repo tags.
    pub type FakeImage = (String, Vec<String>);
    /// A pull the fake was asked for: the reference and the username sent (if any).
    pub type PullCall = (String, Option<String>);
    /// An exec the fake was asked for: container id, command, timeout in seconds.
    pub type ExecCall = (String, Vec<String>, i64);

    #[derive(Clone, Default)]
    pub struct FakeRuntime {
        pub containers: Arc<Mutex<Vec<FakeContainer>>>,
        /// By container id.
        pub execs: Arc<Mutex<HashMap<String, FakeExec>>>,
        /// Execs asked for, in order.
        pub ran: Arc<Mutex<Vec<ExecCall>>>,
        /// Images the node holds.
        pub images: Arc<Mutex<Vec<FakeImage>>>,
        /// Pulls that fail, by reference: how many more times, and with what.
        pub pull_failures: Arc<Mutex<HashMap<String, (u32, String)>>>,
        /// How long a pull takes.
        pub pull_delay: Arc<Mutex<Duration>>,
        /// Pulls asked for, in order.
        pub pulled: Arc<Mutex<Vec<PullCall>>>,
    }

    impl FakeRuntime {
        /// Serves the fake on a unix socket at `path` until the test ends.
        pub async fn serve(&self, path: &std::path::Path) {
            let listener = tokio::net::UnixListener::bind(path).expect("bind");
            let incoming = futures::stream::unfold(listener, |l| async move {
                let accepted = l.accept().await.map(|(s, _)| s);
                Some((accepted, l))
            });
            let runtime = RuntimeServiceServer::new(self.clone());
            let images = ImageServiceServer::new(self.clone());
            let server = tonic::transport::Server::builder().add_service(runtime).add_service(images);
            tokio::spawn(server.serve_with_incoming(incoming));
        }
    }

    macro_rules! unimplemented_rpcs {
        ($($name:ident: $req:ident => $resp:ident),* $(,)?) => {
            // Spelled as `async_trait` expands an `async fn` (the attribute does not reach into
            // macro output).
            $(fn $name<'life0, 'async_trait>(
                &'life0 self,
                _: Request<$req>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<$resp>, Status>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async { Err(Status::unimplemented(stringify!($name))) })
            })*
        };
    }

    #[tonic::async_trait]
    impl RuntimeService for FakeRuntime {
        type GetContainerEventsStream = futures::stream::Empty<Result<ContainerEventResponse, Status>>;

        async fn version(&self, _: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
            Ok(Response::new(VersionResponse {
                version: "0.1.0".into(),
                runtime_name: "fake".into(),
                runtime_version: "1".into(),
                runtime_api_version: "v1".into(),
            }))
        }

        async fn list_containers(
            &self,
            request: Request<ListContainersRequest>,
        ) -> Result<Response<ListContainersResponse>, Status> {
            let filter = request.into_inner().filter.unwrap_or_default();
            let uid = filter.label_selector.get(super::POD_UID_LABEL).cloned();
            let containers = self
                .containers
                .lock()
                .unwrap()
                .iter()
                .filter(|c| uid.as_ref().is_none_or(|u| *u == c.pod_uid))
                .map(|c| Container {
                    id: c.id.clone(),
                    metadata: Some(ContainerMetadata { name: c.name.clone(), attempt: 0 }),
                    state: c.state as i32,
                    created_at: c.created_at,
                    labels: [(super::POD_UID_LABEL.to_string(), c.pod_uid.clone())].into(),
                    ..Default::default()
                })
                .collect();
            Ok(Response::new(ListContainersResponse { containers }))
        }

        async fn container_status(
            &self,
            request: Request<ContainerStatusRequest>,
        ) -> Result<Response<ContainerStatusResponse>, Status> {
            let id = request.into_inner().container_id;
            let containers = self.containers.lock().unwrap();
            let c = containers.iter().find(|c| c.id == id).ok_or_else(|| Status::not_found(id.clone()))?;
            Ok(Response::new(ContainerStatusResponse {
                status: Some(ContainerStatus {
                    id: c.id.clone(),
                    metadata: Some(ContainerMetadata { name: c.name.clone(), attempt: 0 }),
                    state: c.state as i32,
                    created_at: c.created_at,
                    started_at: c.started_at,
                    ..Default::default()
                }),
                info: Default::default(),
            }))
        }

        async fn exec_sync(&self, request: Request<ExecSyncRequest>) -> Result<Response<ExecSyncResponse>, Status> {
            let r = request.into_inner();
            self.ran.lock().unwrap().push((r.container_id.clone(), r.cmd.clone(), r.timeout));
            let exec = self.execs.lock().unwrap().get(&r.container_id).cloned();
            let Some(exec) = exec else { return Err(Status::not_found(r.container_id)) };
            // As a runtime does: the command is cut off at the timeout.
            if r.timeout > 0 && exec.delay > Duration::from_secs(r.timeout as u64) {
                tokio::time::sleep(Duration::from_secs(r.timeout as u64)).await;
                return Err(Status::deadline_exceeded("command timed out"));
            }
            tokio::time::sleep(exec.delay).await;
            Ok(Response::new(ExecSyncResponse {
                stdout: exec.stdout.into_bytes(),
                stderr: exec.stderr.into_bytes(),
                exit_code: exec.exit_code,
            }))
        }

        async fn get_container_events(
            &self,
            _: Request<GetEventsRequest>,
        ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
            Err(Status::unimplemented("get_container_events"))
        }

        unimplemented_rpcs! {
            run_pod_sandbox: RunPodSandboxRequest => RunPodSandboxResponse,
            stop_pod_sandbox: StopPodSandboxRequest => StopPodSandboxResponse,
            remove_pod_sandbox: RemovePodSandboxRequest => RemovePodSandboxResponse,
            pod_sandbox_status: PodSandboxStatusRequest => PodSandboxStatusResponse,
            list_pod_sandbox: ListPodSandboxRequest => ListPodSandboxResponse,
            create_container: CreateContainerRequest => CreateContainerResponse,
            start_container: StartContainerRequest => StartContainerResponse,
            stop_container: StopContainerRequest => StopContainerResponse,
            remove_container: RemoveContainerRequest => RemoveContainerResponse,
            update_container_resources: UpdateContainerResourcesRequest => UpdateContainerResourcesResponse,
            reopen_container_log: ReopenContainerLogRequest => ReopenContainerLogResponse,
            exec: ExecRequest => ExecResponse,
            attach: AttachRequest => AttachResponse,
            port_forward: PortForwardRequest => PortForwardResponse,
            container_stats: ContainerStatsRequest => ContainerStatsResponse,
            list_container_stats: ListContainerStatsRequest => ListContainerStatsResponse,
            pod_sandbox_stats: PodSandboxStatsRequest => PodSandboxStatsResponse,
            list_pod_sandbox_stats: ListPodSandboxStatsRequest => ListPodSandboxStatsResponse,
            update_runtime_config: UpdateRuntimeConfigRequest => UpdateRuntimeConfigResponse,
            status: StatusRequest => StatusResponse,
            checkpoint_container: CheckpointContainerRequest => CheckpointContainerResponse,
            list_metric_descriptors: ListMetricDescriptorsRequest => ListMetricDescriptorsResponse,
            list_pod_sandbox_metrics: ListPodSandboxMetricsRequest => ListPodSandboxMetricsResponse,
            runtime_config: RuntimeConfigRequest => RuntimeConfigResponse,
        }
    }

    #[tonic::async_trait]
    impl ImageService for FakeRuntime {
        async fn list_images(&self, _: Request<ListImagesRequest>) -> Result<Response<ListImagesResponse>, Status> {
            let images = self.images.lock().map_err(|_| Status::internal("poisoned"))?;
            let images = images
                .iter()
                .map(|(id, tags)| Image { id: id.clone(), repo_tags: tags.clone(), ..Default::default() })
                .collect();
            Ok(Response::new(ListImagesResponse { images }))
        }

        async fn pull_image(&self, request: Request<PullImageRequest>) -> Result<Response<PullImageResponse>, Status> {
            let r = request.into_inner();
            let reference = r.image.map(|i| i.image).unwrap_or_default();
            let user = r.auth.map(|a| a.username);
            self.pulled.lock().map_err(|_| Status::internal("poisoned"))?.push((reference.clone(), user));
            let delay = *self.pull_delay.lock().map_err(|_| Status::internal("poisoned"))?;
            tokio::time::sleep(delay).await;
            if let Some((left, message)) =
                self.pull_failures.lock().map_err(|_| Status::internal("poisoned"))?.get_mut(&reference)
                && *left > 0
            {
                *left -= 1;
                return Err(Status::not_found(message.clone()));
            }
            let id = format!("sha256:{:064x}", reference.len());
            self.images.lock().map_err(|_| Status::internal("poisoned"))?.push((id.clone(), vec![reference]));
            Ok(Response::new(PullImageResponse { image_ref: id }))
        }

        unimplemented_rpcs! {
            image_status: ImageStatusRequest => ImageStatusResponse,
            remove_image: RemoveImageRequest => RemoveImageResponse,
            image_fs_info: ImageFsInfoRequest => ImageFsInfoResponse,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeContainer, FakeExec, FakeRuntime};
    use super::*;

    fn socket_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kruise-cri-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("containerd")).unwrap();
        dir
    }

    fn container(id: &str, uid: &str, created: i64, state: ContainerState) -> FakeContainer {
        FakeContainer {
            id: id.into(),
            pod_uid: uid.into(),
            name: "main".into(),
            created_at: created,
            started_at: 1_800_000_000_000_000_000 + created,
            state,
        }
    }

    #[tokio::test]
    async fn probes_run_over_a_real_cri_connection() {
        let dir = socket_dir("path");
        let fake = FakeRuntime::default();
        fake.containers.lock().unwrap().extend([
            container("old", "u1", 1, ContainerState::ContainerExited),
            container("new", "u1", 2, ContainerState::ContainerRunning),
            container("other-pod", "u2", 3, ContainerState::ContainerRunning),
        ]);
        fake.execs.lock().unwrap().extend([
            ("new".to_string(), FakeExec { exit_code: 0, stdout: "idle".into(), ..Default::default() }),
            ("other-pod".to_string(), FakeExec { exit_code: 3, stderr: "busy".into(), ..Default::default() }),
        ]);
        // Discovery: the second known socket is the one that answers.
        fake.serve(&dir.join("containerd/containerd.sock")).await;
        let (path, rt) = CriRuntime::discover(&dir, None).await.expect("discover");
        assert_eq!(path, dir.join("containerd/containerd.sock"));

        let c = rt.container("u1", "main").await.unwrap().expect("container");
        assert_eq!((c.id.as_str(), c.running), ("new", true), "the newest attempt");
        assert_eq!(c.started_at.map(|t| t.as_nanosecond()), Some(1_800_000_000_000_000_002));
        assert_eq!(rt.container("u1", "ghost").await.unwrap(), None);
        assert_eq!(rt.container("u9", "main").await.unwrap(), None);

        let cmd = vec!["/bin/sh".to_string(), "-c".to_string(), "idle.sh".to_string()];
        let ok = rt.exec_sync("new", &cmd, Duration::from_secs(3)).await.unwrap();
        assert_eq!(ok, ExecOutcome::Exited { exit_code: 0, stdout: "idle".into(), stderr: String::new() });
        let failed = rt.exec_sync("other-pod", &cmd, Duration::from_secs(3)).await.unwrap();
        assert_eq!(failed, ExecOutcome::Exited { exit_code: 3, stdout: String::new(), stderr: "busy".into() });
        assert_eq!(
            fake.ran.lock().unwrap()[0],
            ("new".to_string(), cmd.clone(), 3),
            "command and timeout reach the runtime"
        );
        assert!(rt.exec_sync("gone", &cmd, Duration::from_secs(1)).await.is_err(), "a runtime error is no outcome");

        fake.execs
            .lock()
            .unwrap()
            .insert("new".into(), FakeExec { delay: Duration::from_secs(5), ..Default::default() });
        assert_eq!(rt.exec_sync("new", &cmd, Duration::from_secs(1)).await.unwrap(), ExecOutcome::TimedOut);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_named_socket_is_the_only_one_tried() {
        let dir = socket_dir("named");
        let fake = FakeRuntime::default();
        fake.serve(&dir.join("containerd.sock")).await;
        assert!(CriRuntime::discover(&dir, Some("crio.sock")).await.is_err());
        let (path, _) = CriRuntime::discover(&dir, Some("containerd.sock")).await.expect("named socket");
        assert_eq!(path, dir.join("containerd.sock"));
        let err = CriRuntime::discover(&socket_dir("none"), None).await.unwrap_err();
        assert!(err.0.contains("no CRI runtime answered"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn images_are_found_by_repo_tag_and_pulled_with_credentials() {
        let dir = socket_dir("images");
        let fake = FakeRuntime::default();
        fake.images.lock().unwrap().push(("sha256:aaa".into(), vec!["nginx:1.25".into()]));
        fake.pull_failures.lock().unwrap().insert("redis:7".into(), (1, "manifest unknown".into()));
        fake.serve(&dir.join("containerd.sock")).await;
        let (_, rt) = CriRuntime::discover(&dir, Some("containerd.sock")).await.expect("runtime");

        assert_eq!(rt.image_id("nginx:1.25").await.unwrap().as_deref(), Some("sha256:aaa"), "already there");
        assert_eq!(rt.image_id("nginx:1.26").await.unwrap(), None);

        let auth = RegistryAuth { username: "robot".into(), password: "s3cret".into(), ..Default::default() };
        let failed = rt.pull_image("redis:7", Some(&auth)).await.expect_err("the first pull fails");
        assert!(failed.0.contains("manifest unknown"), "{failed}");
        let pulled = rt.pull_image("redis:7", None).await.expect("the second one works");
        assert_eq!(rt.image_id("redis:7").await.unwrap(), Some(pulled));
        assert_eq!(
            *fake.pulled.lock().unwrap(),
            [("redis:7".to_string(), Some("robot".to_string())), ("redis:7".to_string(), None)],
            "the credentials reach the runtime"
        );

        // A slow pull is cut off by the caller's timeout.
        *fake.pull_delay.lock().unwrap() = Duration::from_secs(5);
        let slow = tokio::time::timeout(Duration::from_millis(300), rt.pull_image("busybox:1", None)).await;
        assert!(slow.is_err(), "still pulling at the timeout");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
