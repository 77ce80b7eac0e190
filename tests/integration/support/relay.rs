//! A TCP relay on a free loopback port in front of a real server (etcd),
//! for link failures a proxy process cannot make on cue: cut every
//! connection now, refuse new ones while cut, and cut the next connection
//! after a given number of bytes from the server, in the middle of a reply.
//! Threads only; everything stops when the relay is dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

#[derive(Default)]
struct State {
    open: bool,
    /// Bytes the next connection may carry from the server.
    next_limit: Option<usize>,
    conns: Vec<TcpStream>,
}

pub struct Relay {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Starts relaying 127.0.0.1:<free port> to `upstream` (`127.0.0.1:P`).
    pub fn start(upstream: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().unwrap();
        let upstream: SocketAddr = upstream.parse().expect("an upstream address");
        let state = Arc::new(Mutex::new(State {
            open: true,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (accept_state, accept_stop) = (state.clone(), stop.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if accept_stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let mut state = accept_state.lock().unwrap();
                if !state.open {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let limit = state.next_limit.take();
                state.conns.push(client.try_clone().unwrap());
                state.conns.push(server.try_clone().unwrap());
                drop(state);
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    None,
                );
                pump(server, client, limit);
            }
        });
        Relay { addr, state, stop }
    }

    /// `http://127.0.0.1:R`, for `--node`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every connection and refuses new ones until [`Relay::reopen`].
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.open = false;
        for conn in state.conns.drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// Accepts connections again; the next one is cut after `limit` bytes
    /// from the server, if given.
    pub fn reopen(&self, limit: Option<usize>) {
        let mut state = self.state.lock().unwrap();
        state.open = true;
        state.next_limit = limit;
    }
}

/// Copies `from` to `to` until either ends, or until `limit` bytes, then
/// closes both.
fn pump(mut from: TcpStream, mut to: TcpStream, limit: Option<usize>) {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        let mut sent = 0usize;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let n = match limit {
                Some(limit) if sent + n >= limit => {
                    let _ = to.write_all(&buf[..limit - sent]);
                    break;
                }
                _ => n,
            };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n;
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so it sees the stop flag.
        let _ = TcpStream::connect(self.addr);
    }
}
