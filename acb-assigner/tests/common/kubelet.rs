//! A test kubelet for the device plugin's tests: the kubelet's `Registration` service
//! (device-plugin API v1beta1) on `kubelet.sock` in a temporary directory, handing each
//! registration to the test, restartable as a kubelet restarts; and a client of a plugin's socket.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use acb_proto::deviceplugin as dp;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

/// A client of a device plugin's socket.
pub type PluginClient = dp::device_plugin_client::DevicePluginClient<tonic::transport::Channel>;

/// A client of the plugin at `dir/endpoint`, as the kubelet connects after a registration (large
/// messages allowed: hostile tests send big lists).
pub async fn connect(dir: &Path, endpoint: &str) -> PluginClient {
    let uri = format!("unix:{}", dir.join(endpoint).display());
    let channel =
        bounded(5, "connecting to the plugin", tonic::transport::Endpoint::from_shared(uri).unwrap().connect())
            .await
            .unwrap();
    dp::device_plugin_client::DevicePluginClient::new(channel).max_decoding_message_size(64 << 20)
}

/// `fut`, or a panic naming `what` after `secs`: nothing here may hang.
pub async fn bounded<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: nothing within {secs} s"),
    }
}

/// The test kubelet's Registration service: hands each request to the test.
pub struct Registration(mpsc::UnboundedSender<dp::RegisterRequest>);

#[tonic::async_trait]
impl dp::registration_server::Registration for Registration {
    async fn register(&self, r: Request<dp::RegisterRequest>) -> Result<Response<dp::Empty>, Status> {
        let r = r.into_inner();
        if r.version != dp::VERSION {
            return Err(Status::invalid_argument(format!("unsupported version {:?}", r.version)));
        }
        let _ = self.0.send(r);
        Ok(Response::new(dp::Empty {}))
    }
}

pub struct TestKubelet {
    dir: PathBuf,
    /// The registrations not taken yet.
    pub registrations: mpsc::UnboundedReceiver<dp::RegisterRequest>,
    tx: mpsc::UnboundedSender<dp::RegisterRequest>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestKubelet {
    pub fn start(dir: &Path) -> TestKubelet {
        let (tx, registrations) = mpsc::unbounded_channel();
        let mut k = TestKubelet { dir: dir.to_owned(), registrations, tx, stop: None, server: None };
        k.serve();
        k
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join(dp::KUBELET_SOCKET)
    }

    fn serve(&mut self) {
        let listener = tokio::net::UnixListener::bind(self.socket()).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let service = dp::registration_server::RegistrationServer::new(Registration(self.tx.clone()));
        self.server = Some(tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        }));
        self.stop = Some(stop);
    }

    /// A kubelet restart: its server stops, kubelet.sock goes (and, with `wipe`, every other
    /// socket in the directory, as the real kubelet's device manager does at start), and a new
    /// kubelet.sock is served.
    pub async fn restart(&mut self, wipe: bool) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.server.take() {
            bounded(5, "the test kubelet stopping", t).await.unwrap();
        }
        std::fs::remove_file(self.socket()).unwrap();
        if wipe {
            for e in std::fs::read_dir(&self.dir).unwrap() {
                let _ = std::fs::remove_file(e.unwrap().path());
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.serve();
    }

    pub async fn registration(&mut self, secs: u64) -> dp::RegisterRequest {
        bounded(secs, "a registration", self.registrations.recv()).await.unwrap()
    }

    /// Connects to the plugin's endpoint, as the kubelet does after a registration.
    pub async fn plugin(&self, endpoint: &str) -> PluginClient {
        connect(&self.dir, endpoint).await
    }
}
