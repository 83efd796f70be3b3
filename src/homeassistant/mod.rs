//! Home Assistant MQTT discovery: the optional `homeassistant:` section (discovery prefix, node id,
//! per-port device and per-field unit, device class and state class) and the retained documents that
//! make every published field appear in Home Assistant with no YAML on its side.

mod classes;
pub mod discovery;

use indexmap::IndexMap;
use serde::Deserialize;

use crate::serial::port::PortSettings;
use crate::settings::{unknown, Problems};

pub use discovery::{announce, removals, Announcement};

/// `homeassistant:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistant {
    /// Home Assistant's discovery prefix (its MQTT integration's setting; `homeassistant` unless changed).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The `<node_id>` level of each discovery topic and the start of each entity's unique id; the
    /// gateway name by default (characters other than letters, digits, `_` and `-` become `_`).
    #[serde(default)]
    pub node_id: Option<String>,
    /// Per port: what Home Assistant shows for its device and its fields.
    #[serde(default)]
    pub ports: IndexMap<String, PortInfo>,
}

fn default_prefix() -> String {
    "homeassistant".into()
}

/// `homeassistant.ports.<port>`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortInfo {
    /// The device's name in Home Assistant (default: the port's name).
    pub name: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    /// Published fields Home Assistant should not show (a GPS's hemisphere letters, a talker id).
    #[serde(default)]
    pub skip: Vec<String>,
    #[serde(default)]
    pub fields: IndexMap<String, FieldInfo>,
}

/// `homeassistant.ports.<port>.fields.<field>`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldInfo {
    /// The entity's name (default: the field's name).
    pub name: Option<String>,
    /// `unit_of_measurement`, e.g. `°C`, `μg/m³` (`µ` from a keyboard is accepted).
    pub unit: Option<String>,
    /// A sensor device class (`temperature`, `pm25`, …).
    pub device_class: Option<String>,
    /// `measurement`, `total` or `total_increasing`; numbers default to `measurement`.
    pub state_class: Option<String>,
    /// An icon such as `mdi:satellite-variant`.
    pub icon: Option<String>,
    /// Decimal places Home Assistant shows.
    pub precision: Option<u8>,
}

impl HomeAssistant {
    /// The node id in use: as given, or made from the gateway name.
    pub fn node_id(&self, gateway: &str) -> String {
        self.node_id.clone().unwrap_or_else(|| object_id(gateway))
    }

    /// What serde cannot check, against the resolved ports; keys relative to `homeassistant`.
    pub fn check(&self, ports: &[PortSettings], all_port_names: &[String], p: &mut Problems) {
        if self.prefix.is_empty()
            || self.prefix.contains(['+', '#', '\0'])
            || self.prefix.starts_with('/')
            || self.prefix.ends_with('/')
        {
            p.add("prefix", "a topic prefix without wildcards or a leading or trailing `/`, e.g. `homeassistant`");
        }
        if let Some(id) = &self.node_id {
            if id.is_empty() || object_id(id) != *id {
                p.add("node_id", "only letters, digits, `_` and `-` (Home Assistant's rule for a topic's node id)");
            }
        }
        let names: Vec<&str> = all_port_names.iter().map(String::as_str).collect();
        for (name, info) in &self.ports {
            let at = format!("ports.{name}");
            if !names.contains(&name.as_str()) {
                p.add(&at, unknown("port", name, &names).replace("unknown port", "no port is named"));
                continue;
            }
            // A port whose own section failed is reported there.
            let Some(port) = ports.iter().find(|x| *x.name == **name) else { continue };
            let fields = port.field_names();
            let valid: Vec<&str> = fields.iter().map(String::as_str).collect();
            let no_such = |f: &str| unknown("field", f, &valid).replace("unknown field", "the port has no field");
            for (i, f) in info.skip.iter().enumerate() {
                if !valid.contains(&f.as_str()) {
                    p.add(format!("{at}.skip[{i}]"), no_such(f));
                }
            }
            for (f, field) in &info.fields {
                let at = format!("{at}.fields.{f}");
                if !valid.contains(&f.as_str()) {
                    p.add(&at, no_such(f));
                }
                if let Some(sc) = &field.state_class {
                    if !classes::STATE_CLASSES.contains(&sc.as_str()) {
                        p.add(format!("{at}.state_class"), unknown("state class", sc, classes::STATE_CLASSES));
                        continue;
                    }
                }
                if let Some(dc) = &field.device_class {
                    if let Err((key, why)) = classes::check(dc, field.unit.as_deref(), field.state_class.as_deref()) {
                        p.add(format!("{at}.{key}"), why);
                    }
                }
            }
        }
    }
}

/// `text` with every character outside `[a-zA-Z0-9_-]` replaced by `_`: Home Assistant's rule for the
/// node and object ids in a discovery topic.
pub fn object_id(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}
