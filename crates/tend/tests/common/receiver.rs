//! A webhook receiver for tests of notifications.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A webhook receiver on an ephemeral port: records every POST body, and
/// answers 503 to the first `fail_first` of them.
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<(Instant, Value)>>>,
    /// POSTs received, the refused ones included.
    pub hits: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    pub fn start(fail_first: usize) -> Self {
        let got: Arc<Mutex<Vec<(Instant, Value)>>> = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (g, h) = (got.clone(), hits.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(axum::routing::post(
                    move |body: axum::body::Bytes| {
                        let (g, h) = (g.clone(), h.clone());
                        async move {
                            let n = h.fetch_add(1, Ordering::SeqCst);
                            if n < fail_first {
                                return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                            }
                            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            g.lock().unwrap().push((Instant::now(), v));
                            axum::http::StatusCode::OK
                        }
                    },
                ));
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Self {
            url: format!("http://{addr}/hook"),
            got,
            hits,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Every accepted body with its arrival time, in arrival order.
    pub fn bodies(&self) -> Vec<(Instant, Value)> {
        self.got.lock().unwrap().clone()
    }

    /// Waits for a body matching `pred`; returns it with its arrival time.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> (Instant, Value) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.bodies().into_iter().find(|(_, v)| pred(v)) {
                return found;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; received: {:#?}",
                    self.bodies()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
