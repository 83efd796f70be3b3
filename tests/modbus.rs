//! A Modbus RTU bus on a pty, with tokio-modbus's RTU server playing an SDM120 meter as slave 1 and
//! nothing answering for slave 2: the live meter's registers arrive as readings, a register it does not
//! have is an exception that is counted, and the dead slave is asked less and less often.

use std::sync::atomic::Ordering;

use rumqttc::QoS;

use crate::support::*;

fn yaml(device: &std::path::Path) -> String {
    format!(
        r#"
gateway: {{ name: gw, stats_interval: 1s }}
ports:
  - name: bus
    device: {device}
    modbus:
      every: 300ms
      timeout: 200ms
      offline_after: 2
      slaves:
        - id: 1
          name: meter
          registers:
            - {{ name: voltage, address: 0x0000, function: input, type: f32 }}
            - {{ name: power, address: 0x000C, function: input, type: f32 }}
            - {{ name: energy, address: 0x0156, function: input, type: f32 }}
            - {{ name: missing, address: 0x0300, function: input }}
        - id: 2
          name: dead
          registers:
            - {{ name: voltage, address: 0x0000, function: input, type: f32 }}
maps:
  - {{ port: bus, fields: [voltage, power, energy, missing], topic: "m/{{slave}}/{{field}}", qos: 1 }}
"#,
        device = device.display()
    )
}

/// The simulated SDM120 (slave 1 only) on the master end of a pty; `path` is the end the gateway opens.
struct Meter {
    path: std::path::PathBuf,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Meter {
    fn start() -> Meter {
        let Pty { master, slave, path } = pty();
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let _slave = slave; // the pty lives while the meter does
            ser2mqtt::simulate::meter::serve(master, vec![1], s).await
        });
        Meter { path, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

#[tokio::test]
async fn a_live_meter_is_read_while_a_dead_slave_is_backed_off_and_exceptions_are_counted() {
    let meter = Meter::start();
    let path = meter.path.clone();
    let gw = start(config_from(&yaml(&path))).await;
    let mut sub = subscribe(addr(&gw), &[("m/#", QoS::AtLeastOnce), ("gw/bus/availability", QoS::AtLeastOnce)]).await;
    let mut readings = 0;
    let mut availability = Vec::new();
    while readings < 10 {
        let g = sub.next_on("").await;
        match g.topic.as_str() {
            "m/meter/voltage" => {
                let v: f64 = g.payload.parse().unwrap();
                assert!((230.0..231.0).contains(&v), "{v}");
                readings += 1;
            }
            "m/meter/power" => assert_eq!(g.payload, "345"),
            "m/meter/energy" => {
                assert!(g.payload.starts_with("1234.") || g.payload.starts_with("1235."), "{}", g.payload)
            }
            "gw/bus/availability" => availability.push(g.payload),
            other => panic!("nothing else is published: {other} {}", g.payload),
        }
    }
    assert_eq!(availability, ["online"], "the port is online while one slave answers");
    let counters = gw.stats()[0].1.modbus.snapshot();
    let (live, dead) = (&counters["meter"], &counters["dead"]);
    // Three reads per period for the meter (0x0000+14, 0x0156+2, 0x0300+1), one an exception.
    assert!(live.exceptions >= 10 && live.timeouts == 0, "{live:?}");
    // The dead slave: asked in periods 1, 2, 4, 8 (then 16…), not in every one of the ≥10 periods.
    assert!((3..=5).contains(&dead.timeouts) && dead.requests == dead.timeouts, "{dead:?}");
    assert!(gw.stats()[0].1.frames.load(Ordering::Relaxed) >= 10, "one frame counted per slave reading");
    gw.shutdown().await;
    meter.stop().await;
}

#[tokio::test]
async fn the_shipped_sdm120_config_reads_its_five_values_from_a_simulated_meter() {
    let meter = Meter::start();
    let path = meter.path.clone();
    let c = shipped_config("sdm120-modbus.yaml", &[&path]);
    assert_eq!(c.ports[0].modbus.as_ref().unwrap().plan[0].blocks.len(), 3, "five registers in three requests");
    let gw = start(c).await;
    let mut sub = subscribe(addr(&gw), &[("sensors/#", QoS::AtLeastOnce)]).await;
    let mut got = std::collections::BTreeMap::new();
    while got.len() < 5 {
        let g = sub.next_on("sensors/ser2mqtt/sdm120/").await;
        got.insert(g.topic.rsplit('/').next().unwrap().to_string(), g.payload);
    }
    assert_eq!(got["current"], "1.5");
    assert_eq!(got["power"], "345");
    assert_eq!(got["frequency"], "50");
    assert!(got["voltage"].starts_with("230"), "{got:?}");
    gw.shutdown().await;
    meter.stop().await;
}

#[tokio::test]
async fn commands_write_registers_and_coils_on_a_slave_and_refuse_what_does_not_fit() {
    let meter = Meter::start();
    let path = meter.path.clone();
    let yaml = format!(
        r#"
gateway: {{ name: gw }}
ports:
  - name: bus
    device: {device}
    modbus:
      every: 200ms
      timeout: 300ms
      slaves:
        - id: 1
          name: meter
          registers:
            - {{ name: period, address: 2 }}
            - {{ name: limit, address: 4, type: f32, word_order: cdab }}
            - {{ name: relay, address: 0, function: coil }}
    commands:
      - {{ name: period, modbus: {{ slave: 1, function: write_register, address: 2 }} }}
      - {{ name: limit, modbus: {{ slave: 1, function: write_registers, address: 4, type: f32, word_order: cdab }} }}
      - {{ name: relay, modbus: {{ slave: 1, function: write_coil, address: 0 }} }}
      - {{ name: nowhere, modbus: {{ slave: 1, function: write_register, address: 99 }} }}
maps:
  - {{ port: bus, fields: [period, limit, relay], topic: "m/{{field}}" }}
"#,
        device = path.display()
    );
    let gw = start(config_from(&yaml)).await;
    let mut sub = subscribe(addr(&gw), &[("m/#", QoS::AtLeastOnce), ("gw/bus/result/#", QoS::AtLeastOnce)]).await;
    let result = |g: Got| serde_json::from_str::<serde_json::Value>(&g.payload).unwrap();
    sub.client.publish("gw/bus/set/period", QoS::AtLeastOnce, false, "30").await.unwrap();
    assert_eq!(result(sub.next_on("gw/bus/result/period").await)["result"], "ok");
    sub.client.publish("gw/bus/set/limit", QoS::AtLeastOnce, false, "12.5").await.unwrap();
    assert_eq!(result(sub.next_on("gw/bus/result/limit").await)["result"], "ok");
    // What was written comes back in the next polls of the holding registers.
    let mut seen = std::collections::BTreeMap::new();
    while seen.get("m/period").map(String::as_str) != Some("30")
        || seen.get("m/limit").map(String::as_str) != Some("12.5")
        || !seen.contains_key("m/relay")
    {
        let g = sub.next_on("m/").await;
        seen.insert(g.topic, g.payload);
    }
    assert_eq!(seen.get("m/relay").map(String::as_str), Some("false"), "the coil, read with function 1");
    sub.client.publish("gw/bus/set/relay", QoS::AtLeastOnce, false, "on").await.unwrap();
    assert_eq!(result(sub.next_on("gw/bus/result/relay").await)["result"], "ok");
    while sub.next_on("m/relay").await.payload != "true" {}
    // The slave's exception and a value that does not fit, both as errors.
    sub.client.publish("gw/bus/set/nowhere", QoS::AtLeastOnce, false, "1").await.unwrap();
    let r = result(sub.next_on("gw/bus/result/nowhere").await);
    assert_eq!(
        (r["result"].as_str(), r["reason"].as_str()),
        (Some("error"), Some("slave 1 answered exception IllegalDataAddress"))
    );
    sub.client.publish("gw/bus/set/period", QoS::AtLeastOnce, false, "70000").await.unwrap();
    let r = result(sub.next_on("gw/bus/result/period").await);
    assert_eq!(r["reason"], "`value` = 70000 does not fit u16 (0..=65535)");
    gw.shutdown().await;
    meter.stop().await;
}

/// A pty has no RS-485 mode, as a USB adapter with automatic direction control has none: `rs485:`
/// there is an open failure, retried like a missing device, and the port says `offline`.
#[tokio::test]
async fn rs485_mode_on_a_device_without_it_fails_the_open_and_is_retried() {
    let p = pty();
    let yaml = format!(
        "gateway: {{ name: gw }}\nports:\n  - name: bus\n    device: {}\n    rs485: {{ delay_after_send: 1ms }}\n    framing: {{ type: lines }}\n    decoder: {{ type: csv, columns: [a] }}\n",
        p.path.display()
    );
    let gw = ser2mqtt::gateway::Gateway::start(config_from(&yaml)).await.unwrap();
    let mut sub = subscribe(addr(&gw), &[("gw/bus/availability", QoS::AtLeastOnce)]).await;
    assert_eq!(sub.next_on("gw/bus/availability").await.payload, "offline");
    let stats = gw.stats()[0].1.clone();
    wait_for("two failed opens", || stats.open_failures.load(Ordering::Relaxed) >= 2).await;
    assert_eq!(stats.opens.load(Ordering::Relaxed), 0);
    gw.shutdown().await;
}
