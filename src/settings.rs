//! What the settings types of every module share: the problems one section of the file has, each at
//! a key path relative to that section, and the "did you mean" suggestion for a mistyped name.
//! `config` places them in the file (line, column, full key path); the modules that own the settings
//! only say what is wrong and where within their section.

/// Problems found in one section, in the order found.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<(String, String)>,
}

impl Problems {
    /// A problem at `key`, relative to the section (`""` for the section itself, `patterns[0]`,
    /// `fields.temp`).
    pub fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.list.push((key.into(), message.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// (relative key, message) pairs.
    pub fn into_list(self) -> Vec<(String, String)> {
        self.list
    }
}

/// The valid name closest to `typed`, if one is close enough to be what was meant.
pub fn suggest<'a>(typed: &str, valid: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let score = |v: &str| {
        let edits = strsim::osa_distance(typed, v);
        if edits <= 2 && edits < typed.len().max(v.len()) {
            2.0 - edits as f64 / 10.0
        } else {
            strsim::jaro_winkler(typed, v)
        }
    };
    valid
        .into_iter()
        .map(|v| (score(v), v))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| v)
}

/// The default `scale` of every setting that has one (a serde `default` function).
pub fn one() -> f64 {
    1.0
}

/// "unknown `what` `name`, did you mean `x`? (valid: `a`, `b`)".
pub fn unknown(what: &str, name: &str, valid: &[&str]) -> String {
    let list = valid.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ");
    match suggest(name, valid.iter().copied()) {
        Some(s) => format!("unknown {what} `{name}`, did you mean `{s}`? (valid: {list})"),
        None => format!("unknown {what} `{name}` (valid: {list})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_names_are_suggested_far_ones_are_not() {
        assert_eq!(suggest("baud", ["baud_rate", "parity"]), Some("baud_rate"));
        assert_eq!(suggest("xyz", ["baud_rate", "parity"]), None);
        assert_eq!(
            unknown("key", "tmep", &["temp", "hum"]),
            "unknown key `tmep`, did you mean `temp`? (valid: `temp`, `hum`)"
        );
    }
}
