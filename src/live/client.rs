//! `ser2mqtt tap`: a client of the running gateway's broker that asks for a port's frames and prints
//! each as it comes, like `candump`: time, port, verdict, the bytes as text and hex, then the decoded
//! values or why the frame was dropped. The gateway keeps the device.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};

use super::{Event, Request, Verdict};
use crate::config::Config;

/// The tap renews its request this often, for `RENEW * 3` each time: a tap that dies stops the
/// tracing within 15 s, and one lost request does not interrupt a running tap.
const RENEW: Duration = Duration::from_secs(5);

/// What `ser2mqtt tap` was asked.
pub struct TapOptions {
    pub port: Option<String>,
    /// The broker to connect to; default the config's first listener (loopback for a wildcard bind).
    pub broker: Option<SocketAddr>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Stop after this many frames.
    pub count: Option<usize>,
}

/// Where a local client reaches the config's first listener.
fn local_addr(config: &Config) -> Option<SocketAddr> {
    let mut addr = config.broker.listeners.first()?.addr;
    if addr.ip().is_unspecified() {
        let ip = if addr.is_ipv4() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) };
        addr.set_ip(ip);
    }
    Some(addr)
}

/// Prints frames until `count` or Ctrl-C.
pub async fn run(config: &Config, opts: TapOptions, mut print: impl FnMut(&str)) -> anyhow::Result<()> {
    if let Some(p) = &opts.port {
        if !config.ports.iter().any(|x| *x.name == **p) {
            let names: Vec<&str> = config.ports.iter().map(|x| &*x.name).collect();
            bail!("{}", crate::settings::unknown("port", p, &names));
        }
    }
    let Some(addr) = opts.broker.or_else(|| local_addr(config)) else { bail!("the config has no broker listener") };
    let status = &config.gateway.status_topic;
    let filter = super::topic(status, opts.port.as_deref().unwrap_or("+"));
    let request_topic = super::request_topic(status);
    let mut mqtt = MqttOptions::new(format!("ser2mqtt-tap-{}", std::process::id()), addr.ip().to_string(), addr.port());
    mqtt.set_keep_alive(Duration::from_secs(30));
    if let Some(u) = &opts.username {
        mqtt.set_credentials(u, opts.password.clone().unwrap_or_default());
    }
    let (client, mut events) = AsyncClient::new(mqtt, 64);
    client.subscribe(&filter, QoS::AtMostOnce).await?;
    let request = serde_json::to_vec(&Request { port: opts.port.clone(), seconds: RENEW.as_secs() * 3 })?;
    let mut renew = tokio::time::interval(RENEW);
    let mut seen = 0usize;
    let mut connected = false;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = renew.tick() => {
                client.publish(&request_topic, QoS::AtLeastOnce, false, request.clone()).await?;
            }
            ev = events.poll() => match ev {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    if !connected {
                        connected = true;
                        print(&format!("tapping {filter} on {addr} (Ctrl-C stops)"));
                    }
                }
                Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                        bail!("the broker refused the subscription to {filter}: the ACL must allow this user to \
                               subscribe to it and to publish to {request_topic}");
                    }
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) if p.topic != request_topic => {
                    let port = p.topic.rsplit('/').next().unwrap_or("?").to_string();
                    match serde_json::from_slice::<Event>(&p.payload) {
                        Ok(e) => print(&render(&port, &e)),
                        Err(e) => print(&format!("{port}: unreadable event ({e})")),
                    }
                    seen += 1;
                    if opts.count.is_some_and(|n| seen >= n) {
                        let _ = client.disconnect().await;
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let why = if connected { "lost the connection to" } else { "cannot connect to" };
                    return Err(e).with_context(|| format!("{why} the gateway's broker at {addr}: is the gateway running?"));
                }
            },
        }
    }
}

/// One frame as lines: `12:35:19.123  gps  ok  "$GPGGA,…"`, its hex, then values or the reason.
pub fn render(port: &str, e: &Event) -> String {
    let time = e.time.get(11..23).unwrap_or(&e.time);
    let verdict = match e.verdict {
        Verdict::Ok => "ok",
        Verdict::Garbled => "GARBLED",
        Verdict::Ignored => "ignored",
        Verdict::DecodeError => "DECODE ERROR",
    };
    let mut out = format!("{time}  {port}  {verdict}");
    let pad = " ".repeat(time.len() + 2);
    if let Some(hex) = &e.hex {
        let bytes = crate::bytes::parse_hex(hex).unwrap_or_default();
        let printable = bytes.iter().filter(|b| b.is_ascii_graphic() || **b == b' ').count();
        if !bytes.is_empty() && printable * 10 >= bytes.len() * 9 {
            out.push_str(&format!("  {:?}", String::from_utf8_lossy(&bytes)));
        }
        out.push_str(&format!("\n{pad}[{}] {hex}", bytes.len()));
    }
    if let Some(why) = &e.why {
        out.push_str(&format!("\n{pad}{why}"));
    }
    if let Some(fields) = &e.fields {
        let values: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("\n{pad}{}", values.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_shows_as_text_hex_and_values_or_why() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-30T12:35:19.123Z").unwrap().with_timezone(&chrono::Utc);
        let ok = Event::new(t, Verdict::Ok).bytes(b"T,21.5").fields(&[("t".into(), crate::decode::Value::Float(21.5))]);
        assert_eq!(
            render("a", &ok),
            "12:35:19.123  a  ok  \"T,21.5\"\n              [6] 54 2C 32 31 2E 35\n              t=21.5"
        );
        let bad = Event::new(t, Verdict::Garbled).bytes(&[0x42, 0x4D, 0x00]).why("checksum mismatch");
        assert_eq!(
            render("air", &bad),
            "12:35:19.123  air  GARBLED\n              [3] 42 4D 00\n              checksum mismatch"
        );
    }
}
