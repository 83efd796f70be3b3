//! `ports:` → `PortSettings`: line settings, framing, checksum and decoder, each checked against
//! the others (a binary field must fit the frame).

use tokio_serial::{DataBits, StopBits};

use super::*;
use crate::command::{Command, CommandSettings};
use crate::modbus::{ModbusPort, ModbusSettings};
use crate::serial::framing::Framing;
use crate::serial::poll::PollSettings;
use crate::serial::port::Device;

pub(super) fn resolve_port(
    raw: &RawPort,
    path: &str,
    settings: &GatewaySettings,
    p: &mut Problems,
) -> Option<PortSettings> {
    let gateway = settings.name.as_str();
    let start = p.count();
    if !topic_name_ok(&raw.name) {
        p.add(&format!("{path}.name"), "must be non-empty and contain none of `/ + # { }`");
    }
    let device = Device::parse(&raw.device).map_err(|e| p.add(&format!("{path}.device"), e)).ok();
    if raw.baud_rate == 0 {
        p.add(&format!("{path}.baud_rate"), "must be a positive rate such as 9600 or 115200");
    }
    let data_bits = match raw.data_bits {
        5 => Some(DataBits::Five),
        6 => Some(DataBits::Six),
        7 => Some(DataBits::Seven),
        8 => Some(DataBits::Eight),
        n => {
            p.add(&format!("{path}.data_bits"), format!("{n} is not valid: use 5, 6, 7 or 8"));
            None
        }
    };
    let stop_bits = match raw.stop_bits {
        1 => Some(StopBits::One),
        2 => Some(StopBits::Two),
        n => {
            p.add(&format!("{path}.stop_bits"), format!("{n} is not valid: use 1 or 2"));
            None
        }
    };
    if raw.silence_timeout.is_zero() || raw.reopen_backoff_max.is_zero() {
        p.add(path, "`silence_timeout` and `reopen_backoff_max` must be longer than 0s");
    }
    let modbus = resolve_modbus(raw, path, p);
    let (framing, checksum, decoder) = if raw.modbus.is_null() {
        let framing = required::<Framing>(&raw.framing, &format!("{path}.framing"), "framing", p).filter(|f| {
            let mut found = crate::settings::Problems::default();
            f.check(&mut found);
            let ok = found.is_empty();
            place(p, &format!("{path}.framing"), found);
            ok
        });
        let checksum = if raw.checksum.is_null() {
            None
        } else {
            section::<ChecksumSettings>(raw.checksum.clone(), &format!("{path}.checksum"), p).and_then(|c| c.resolve())
        };
        let decoder =
            required::<DecoderSettings>(&raw.decoder, &format!("{path}.decoder"), "decoder", p).and_then(|d| {
                let mut found = crate::settings::Problems::default();
                let decoder = d.resolve(framing.as_ref().map(Framing::max_frame), &mut found);
                place(p, &format!("{path}.decoder"), found);
                decoder
            });
        (framing, checksum, decoder)
    } else {
        for (key, v) in
            [("framing", &raw.framing), ("checksum", &raw.checksum), ("decoder", &raw.decoder), ("poll", &raw.poll)]
        {
            if !v.is_null() {
                p.add(
                    &format!("{path}.{key}"),
                    "a Modbus port has no `framing`, `checksum`, `decoder` or `poll`: Modbus RTU frames and checks \
                     itself, and `modbus.slaves[].registers` say what to read and how to decode it",
                );
            }
        }
        // Unused on a Modbus port: `modbus::poll_bus` reads the bus.
        (
            Some(Framing::Lines(crate::serial::framing::Lines { delimiter: "\n".into(), max_length: 1 })),
            None,
            Some(crate::decode::FrameDecoder::Binary { fields: Vec::new() }),
        )
    };
    let poll = if raw.poll.is_null() {
        None
    } else {
        section::<PollSettings>(raw.poll.clone(), &format!("{path}.poll"), p).filter(|poll| {
            let mut found = crate::settings::Problems::default();
            poll.check(&mut found);
            let ok = found.is_empty();
            place(p, &format!("{path}.poll"), found);
            ok
        })
    };
    let commands = resolve_commands(raw, path, settings, p);
    let names = match (&modbus, &decoder) {
        (Some(m), _) => m.settings.field_names(),
        (None, Some(d)) => d.field_names(),
        (None, None) => Vec::new(),
    };
    let mut transforms = Vec::new();
    for (i, v) in list(raw.transforms.clone(), &format!("{path}.transforms"), p).into_iter().enumerate() {
        let at = format!("{path}.transforms[{i}]");
        if let Some(t) = section::<crate::transform::Transform>(v, &at, p) {
            let mut found = crate::settings::Problems::default();
            if !names.is_empty() {
                t.check(&names, &mut found);
            }
            place(p, &at, found);
            transforms.push(t);
        }
    }
    let mut ignore = Vec::new();
    for (i, re) in raw.ignore.iter().enumerate() {
        match regex::bytes::Regex::new(re) {
            Ok(r) => ignore.push(r),
            Err(e) => p.add(&format!("{path}.ignore[{i}]"), format!("not a valid regex: {e}")),
        }
    }
    let availability_topic = render_fixed(
        &raw.availability_topic,
        &format!("{path}.availability_topic"),
        &[("gateway", gateway), ("port", &raw.name)],
        p,
    );
    if p.count() != start {
        return None;
    }
    Some(PortSettings {
        name: Arc::from(raw.name.as_str()),
        device: device?,
        baud_rate: raw.baud_rate,
        data_bits: data_bits?,
        parity: raw.parity,
        stop_bits: stop_bits?,
        flow_control: raw.flow_control,
        framing: framing?,
        checksum,
        decoder: Arc::new(decoder?),
        silence_timeout: raw.silence_timeout,
        availability_topic,
        live_topic: crate::live::topic(&settings.status_topic, &raw.name),
        skip_first_frames: raw.skip_first_frames,
        reopen_backoff_max: raw.reopen_backoff_max,
        poll,
        commands,
        modbus,
        transforms,
        ignore,
        rs485: raw.rs485.clone(),
        fingerprint: String::new(),
    })
}

/// A sub-section a port cannot do without: its absence is named as such, not as a missing `type`.
fn required<T: serde::de::DeserializeOwned>(v: &Value, path: &str, key: &str, p: &mut Problems) -> Option<T> {
    if v.is_null() {
        let parent = path.rsplit_once('.').map_or(path, |(parent, _)| parent);
        p.add(parent, format!("missing key `{key}`"));
        return None;
    }
    section(v.clone(), path, p)
}

/// `commands:`: each entry read and checked on its own, its topics rendered; names unique per port.
fn resolve_commands(raw: &RawPort, path: &str, g: &GatewaySettings, p: &mut Problems) -> Vec<Arc<Command>> {
    let mut out: Vec<Arc<Command>> = Vec::new();
    for (i, v) in list(raw.commands.clone(), &format!("{path}.commands"), p).into_iter().enumerate() {
        let at = format!("{path}.commands[{i}]");
        let Some(settings) = section::<CommandSettings>(v, &at, p) else { continue };
        let mut found = crate::settings::Problems::default();
        let command = settings.resolve(&mut found);
        place(p, &at, found);
        let Some(mut command) = command else { continue };
        let modbus_port = !raw.modbus.is_null();
        if command.modbus.is_some() != modbus_port {
            let why = if raw.modbus.is_null() {
                "`modbus:` commands need a Modbus port (one with `modbus:`)"
            } else {
                "a Modbus port takes `modbus:` commands (a write to a slave), not bytes"
            };
            p.add(&at, why);
            continue;
        }
        if out.iter().any(|c| c.name == command.name) {
            p.add(&format!("{at}.name"), format!("command `{}` is defined twice on this port", command.name));
            continue;
        }
        let vars = [("gateway", g.name.as_str()), ("port", raw.name.as_str()), ("command", command.name.as_str())];
        command.topic = fill(&g.command_topic, &vars);
        command.result_topic = fill(&g.result_topic, &vars);
        out.push(Arc::new(command));
    }
    out
}

/// `modbus:`: the slaves and registers, and the read plan made from them.
fn resolve_modbus(raw: &RawPort, path: &str, p: &mut Problems) -> Option<Arc<ModbusPort>> {
    if raw.modbus.is_null() {
        return None;
    }
    let at = format!("{path}.modbus");
    let settings = section::<ModbusSettings>(raw.modbus.clone(), &at, p)?;
    let mut found = crate::settings::Problems::default();
    let plan = settings.plan(&mut found);
    place(p, &at, found);
    Some(Arc::new(ModbusPort { settings, plan: plan? }))
}
