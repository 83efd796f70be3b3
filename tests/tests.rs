//! Integration tests, built as one binary (as ripgrep does). Every test uses its own ptys, its own
//! broker on a free loopback port and its own temp dir.

mod support;

mod availability;
mod bad_env;
mod broker_auth;
mod broker_limits;
mod broker_tls;
mod broker_ws;
mod bursts;
mod cli;
mod commands;
mod config_errors;
mod docs;
mod garbage;
mod homeassistant;
mod lifecycle;
mod live;
mod metrics;
mod modbus;
mod sensors;
mod upstream;
