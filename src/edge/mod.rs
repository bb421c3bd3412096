//! The edge daemon's parts (`hedged`): configuration, data sources and their wire format, the
//! acquisition queue, the scheduler loop, the spool, the MQTT publisher and systemd
//! notifications.

pub mod config;
pub mod daemon;
pub mod frame;
pub mod message;
pub mod mqtt;
pub mod notify;
pub mod publish;
pub mod queue;
pub mod source;
pub mod spool;
