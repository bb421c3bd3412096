//! An embedded MQTT broker (rumqttd) for the demo and for machines with nothing else
//! configured. It keeps messages in memory only: production deployments use a real broker.

use super::{BackendError, Result};
use crate::files::IoError;
use crate::transport::message::MAX_PAYLOAD;
use std::net::TcpListener;

/// Start rumqttd on 127.0.0.1:`port` (0: a free port) in its own thread; returns the port.
pub fn start_embedded(port: u16) -> Result<u16> {
    let port = if port == 0 {
        // Ask the OS for a free port, then release it for the broker.
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| IoError::new("127.0.0.1:0", e))?
            .port()
    } else {
        port
    };
    let config_text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 64
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = {payload}
    max_inflight_count = 100
    dynamic_filters = true
"#,
        payload = MAX_PAYLOAD + 1024
    );
    let config: rumqttd::Config =
        toml::from_str(&config_text).map_err(|e| BackendError::Broker(format!("config: {e}")))?;
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                log::error!("embedded broker stopped: {e}");
            }
        })
        .map_err(|e| IoError::new("broker thread", e))?;
    // Wait until it accepts connections.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(BackendError::Broker(format!(
        "did not start on port {port}"
    )))
}
