//! A fault proxy: a loopback TCP proxy in front of a server that can drop every
//! connection (an outage: resets, refused reads), hold them without answering (a
//! black hole), or add latency — what a store or a network does on a bad day.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Pass traffic through.
    None = 0,
    /// Close every connection at once, new and open ones.
    Drop = 1,
    /// Accept connections and never answer.
    BlackHole = 2,
}

pub struct Proxy {
    pub addr: SocketAddr,
    fault: Arc<AtomicU8>,
    latency_ms: Arc<AtomicU64>,
    /// Cancelled to cut every open connection when a fault starts.
    epoch: Arc<Mutex<CancellationToken>>,
    /// Connections closed or held because of a fault.
    pub faulted: Arc<AtomicU64>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (fault, latency_ms, faulted) =
            (Arc::new(AtomicU8::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let epoch = Arc::new(Mutex::new(CancellationToken::new()));
        let (f, l, e, n) = (fault.clone(), latency_ms.clone(), epoch.clone(), faulted.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let (fault, latency, cut, faulted) = (f.clone(), l.clone(), e.lock().unwrap().clone(), n.clone());
                tokio::spawn(async move { serve(client, target, fault, latency, cut, faulted).await });
            }
        });
        Self { addr, fault, latency_ms, epoch, faulted }
    }

    pub fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
        if fault != Fault::None {
            let mut epoch = self.epoch.lock().unwrap();
            epoch.cancel();
            *epoch = CancellationToken::new();
        }
    }

    pub fn latency(&self, latency: Duration) {
        self.latency_ms.store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn serve(
    mut client: TcpStream,
    target: SocketAddr,
    fault: Arc<AtomicU8>,
    latency: Arc<AtomicU64>,
    cut: CancellationToken,
    faulted: Arc<AtomicU64>,
) {
    match fault.load(Ordering::SeqCst) {
        1 => {
            faulted.fetch_add(1, Ordering::SeqCst);
            return;
        }
        2 => {
            faulted.fetch_add(1, Ordering::SeqCst);
            while fault.load(Ordering::SeqCst) == 2 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return;
        }
        _ => {}
    }
    let delay = latency.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let Ok(mut server) = TcpStream::connect(target).await else { return };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.cancelled() => { faulted.fetch_add(1, Ordering::SeqCst); }
    }
}
