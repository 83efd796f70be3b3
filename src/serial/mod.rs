//! Serial ports: opening and reopening devices, cutting their bytes into frames, checking checksums,
//! and turning frames into readings for the publisher.

pub mod checksum;
pub mod framing;
pub mod poll;
pub mod port;
pub mod probe;
pub mod reader;
pub mod request;
pub mod rs485;
pub mod stream;

pub use port::{run_port, PortStats};
