//! [`ServerThread`]: an axum app served on `127.0.0.1:0` from a thread
//! with its own runtime, stopped and joined when dropped. What both
//! fixtures share.

use std::net::SocketAddr;
use std::time::Duration;

/// A running server; stopped when dropped.
#[derive(Debug)]
pub(crate) struct ServerThread {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Serves `app` on a free local port.
    ///
    /// # Panics
    /// When no local port can be bound.
    pub(crate) fn start(app: axum::Router) -> ServerThread {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("the server's runtime builds");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("a local port is free");
                ready_tx
                    .send(
                        listener
                            .local_addr()
                            .expect("a bound socket has an address"),
                    )
                    .expect("the starter waits for the address");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
            // Streams still being sent are cut off here.
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        let addr = ready_rx.recv().expect("the server reports its address");
        ServerThread {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
