//! A TCP proxy in front of a database server, so a test can cut the database off mid-stream
//! (every open connection dropped, new ones refused) and bring it back: a real outage as the
//! client sees one, without stopping a server other tests share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let task = {
            let (cut, generation, upstream) =
                (Arc::clone(&cut), generation.clone(), upstream.to_owned());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let mut dropped = generation.subscribe();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = dropped.changed() => {}
                        }
                    });
                }
            })
        };
        Self {
            addr,
            cut,
            generation,
            task,
        }
    }

    /// The database is gone: open connections drop, new ones are refused.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// The database is back.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// `url` (`scheme://user@host:port/…`) with its host and port replaced by the proxy's.
    /// For MySQL the client is told not to switch to the server's Unix socket, which it does
    /// by default on a loopback address (and which would bypass the proxy).
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("scheme");
        let (user, rest) = rest.split_once('@').map_or(("", rest), |(u, r)| (u, r));
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        let at = if user.is_empty() { "" } else { "@" };
        let mut proxied = format!("{scheme}://{user}{at}{}{path}", self.addr);
        if scheme == "mysql" {
            proxied.push(if path.contains('?') { '&' } else { '?' });
            proxied.push_str("prefer_socket=false");
        }
        proxied
    }

    /// `host:port` of `url`.
    pub fn authority(url: &str) -> String {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let rest = rest.split_once('@').map_or(rest, |(_, r)| r);
        rest.split('/').next().unwrap_or(rest).to_owned()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
