//! systemd's service notification protocol (sd_notify): datagrams such as `READY=1`,
//! `WATCHDOG=1`, `STOPPING=1` sent to the socket named by `$NOTIFY_SOCKET` (a path, or an
//! abstract name starting with `@`). Without that variable (not run by systemd) every call is a
//! no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    pub fn from_env() -> Self {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let name = name.to_string_lossy().into_owned();
            let addr = match name.strip_prefix('@') {
                Some(abstract_name) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
                }
                None => std::os::unix::net::SocketAddr::from_pathname(&name),
            };
            match (UnixDatagram::unbound(), addr) {
                (Ok(socket), Ok(addr)) => Some((socket, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    log::warn!("NOTIFY_SOCKET {name}: {e}; no service notifications");
                    None
                }
            }
        });
        Self { target }
    }

    /// Send one notification (newline-separated assignments).
    pub fn send(&self, state: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
                log::debug!("sd_notify {state:?}: {e}");
            }
        }
    }

    /// How often systemd expects `WATCHDOG=1` (half its `WatchdogSec`), if it does.
    pub(crate) fn watchdog_interval() -> Option<Duration> {
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.parse::<u32>().ok() != Some(std::process::id()) {
                return None;
            }
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let socket = UnixDatagram::unbound().unwrap();
        let n = Notifier {
            target: Some((
                socket,
                std::os::unix::net::SocketAddr::from_pathname(&path).unwrap(),
            )),
        };
        n.send("READY=1");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        Notifier { target: None }.send("READY=1");
    }
}
