//! Which regex patterns can produce a given value in a named group: `check` uses it to show, for a
//! map with a `when` condition, only the fields of the frames that condition selects.

use regex_syntax::hir::{Hir, HirKind};

/// Whether `pattern` has a group `group` whose sub-pattern matches all of `value`. A pattern without
/// the group cannot produce a frame where the field has that value. An unparsable pattern counts as
/// possible (the decoder compiled it already, so this does not happen in practice).
pub fn can_capture(pattern: &str, group: &str, value: &str) -> bool {
    let Ok(hir) = regex_syntax::parse(pattern) else { return true };
    let mut subs = Vec::new();
    find(&hir, group, &mut subs);
    subs.iter().any(|sub| regex::Regex::new(&format!("^(?:{sub})$")).map(|r| r.is_match(value)).unwrap_or(true))
}

fn find(hir: &Hir, group: &str, out: &mut Vec<String>) {
    match hir.kind() {
        HirKind::Capture(c) => {
            if c.name.as_deref() == Some(group) {
                out.push(c.sub.to_string());
            }
            find(&c.sub, group, out);
        }
        HirKind::Concat(hs) | HirKind::Alternation(hs) => hs.iter().for_each(|h| find(h, group, out)),
        HirKind::Repetition(r) => find(&r.sub, group, out),
        HirKind::Empty | HirKind::Literal(_) | HirKind::Class(_) | HirKind::Look(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::can_capture;

    #[test]
    fn a_group_matches_only_its_own_values() {
        let gga = r"^\$(?P<talker>G[PN])(?P<sentence>GGA),(?P<fix_time>[^,]*),";
        let either = r"^\$(?P<talker>G[PN])(?P<sentence>GGA|RMC),";
        assert!(can_capture(gga, "sentence", "GGA"));
        assert!(!can_capture(gga, "sentence", "RMC"));
        assert!(!can_capture(gga, "sentence", "GGAX"));
        assert!(can_capture(either, "sentence", "RMC"));
        assert!(!can_capture(gga, "status", "A"), "no such group");
        assert!(can_capture(r"(?P<n>\d+)", "n", "42"));
        assert!(!can_capture(r"(?P<n>\d+)", "n", "x"));
    }
}
