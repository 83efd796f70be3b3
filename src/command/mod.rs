//! Commands from MQTT to serial devices: a client (on the LAN, or in the cloud through the bridge's
//! downlink) publishes on a command's topic, the payload is turned into bytes, the port writes them
//! (one request at a time, between its polls), and the result goes to the result topic:
//! `{"command":"zero","result":"ok"}` or `{"result":"error","reason":"…"}`, with the request's
//! `correlation` and the device's `reply` (hex) when there was one.

pub mod modbus;
pub mod settings;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use settings::{Command, CommandSettings, Payload};

use crate::serial::port::PortEvent;
use crate::serial::request::{PortRequest, WRITE_TIMEOUT};
use crate::topic_map::OutMessage;

/// Commands waiting for one port: a client that floods a port gets `error: busy` beyond this, and
/// memory stays bounded.
pub const QUEUE_PER_PORT: usize = 16;

/// The longest a command may wait behind others before it is written: QUEUE_PER_PORT commands of a
/// second each, and a poll cycle.
const QUEUE_WAIT: Duration = Duration::from_secs(30);

/// What a command topic leads to.
#[derive(Clone)]
struct Target {
    port: Arc<str>,
    command: Arc<Command>,
    requests: mpsc::Sender<PortRequest>,
}

/// Every command topic of the running ports, updated as ports start and stop.
#[derive(Clone, Default)]
pub struct Commands {
    table: Arc<RwLock<HashMap<String, Target>>>,
}

impl Commands {
    /// A port started (or restarted) with these commands and this request channel.
    pub fn set_port(&self, port: &Arc<str>, commands: &[Arc<Command>], requests: &mpsc::Sender<PortRequest>) {
        let mut t = self.table.write().expect("not poisoned");
        t.retain(|_, target| &target.port != port);
        for c in commands {
            t.insert(c.topic.clone(), Target { port: port.clone(), command: c.clone(), requests: requests.clone() });
        }
    }

    pub fn remove_port(&self, port: &Arc<str>) {
        self.table.write().expect("not poisoned").retain(|_, target| &target.port != port);
    }

    /// Runs until cancelled: each message from `rx` on a command topic is carried out on its own
    /// task (commands for different ports do not wait for each other), and its result is handed to
    /// the publisher through `results`.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<OutMessage>,
        results: mpsc::Sender<PortEvent>,
        cancel: CancellationToken,
    ) {
        let tasks = TaskTracker::new();
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => break,
                m = rx.recv() => match m { Some(m) => m, None => break },
            };
            let target = self.table.read().expect("not poisoned").get(&msg.topic).cloned();
            tracing::debug!(topic = %msg.topic, known = target.is_some(), "command message");
            let Some(target) = target else { continue };
            let results = results.clone();
            tasks.spawn(async move {
                let result = carry_out(&target, &msg.payload).await;
                let _ = results.send(PortEvent::Message(result)).await;
            });
        }
        tasks.close();
        // Commands under way get their result (each is bounded by its timeouts).
        tasks.wait().await;
    }
}

async fn carry_out(target: &Target, payload: &[u8]) -> OutMessage {
    let command = &target.command;
    let mut result = serde_json::Map::new();
    result.insert("command".into(), command.name.clone().into());
    let outcome: Result<Option<Bytes>, String> = async {
        let payload = Payload::parse(payload)?;
        if let Some(c) = payload.correlation.clone() {
            result.insert("correlation".into(), c);
        }
        let (req, done) = match &command.modbus {
            Some(m) => PortRequest::modbus(m.build(&payload)?),
            None => PortRequest::new(command.build(&payload)?, command.reply.clone()),
        };
        match target.requests.try_send(req) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(format!("port `{}` is busy: {QUEUE_PER_PORT} commands are waiting", target.port))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(format!("port `{}` is stopping", target.port)),
        }
        let limit = QUEUE_WAIT + WRITE_TIMEOUT + command.reply.as_ref().map_or(Duration::ZERO, |r| r.timeout);
        match tokio::time::timeout(limit, done).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(format!("port `{}` stopped before the command was written", target.port)),
            Err(_) => Err(format!("not carried out within {limit:?}")),
        }
    }
    .await;
    match outcome {
        Ok(reply) => {
            result.insert("result".into(), "ok".into());
            if let Some(r) = reply {
                result.insert("reply".into(), crate::bytes::hex(&r).into());
            }
        }
        Err(reason) => {
            tracing::info!(port = %target.port, command = %command.name, %reason, "command not carried out");
            result.insert("result".into(), "error".into());
            result.insert("reason".into(), reason.into());
        }
    }
    let payload = Bytes::from(serde_json::Value::Object(result).to_string());
    OutMessage { topic: command.result_topic.clone(), payload, qos: 1, retain: false }
}
