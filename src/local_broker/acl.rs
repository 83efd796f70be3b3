//! Topic access control for the embedded broker: who may subscribe to and publish on what. A
//! subscription is granted only if every topic its filter can match is allowed, and refused if it
//! could match any denied topic; `$`-topics are never reached through a leading wildcard (MQTT 3.1.1
//! §4.7.2). Pure logic here; `AclHook` applies it to rmqtt's check hooks and counts refusals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::types::{PublishAclResult, SubscribeAclResult};

/// Whom a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    User(String),
    /// Clients that connected without a username.
    Anonymous,
    Everyone,
}

/// One rule, resolved: `listener` is the index of the listener it is limited to, if any (rmqtt's
/// listener id, as the broker module registers them).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub subject: Subject,
    pub listener: Option<u16>,
    pub deny: bool,
    pub subscribe: Vec<String>,
    pub publish: Vec<String>,
}

/// The rule set. `None` rules means no ACL is configured: every client may do everything.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Option<Vec<Rule>>,
}

impl Acl {
    pub fn open() -> Acl {
        Acl { rules: None }
    }

    pub fn new(rules: Vec<Rule>) -> Acl {
        Acl { rules: Some(rules) }
    }

    fn applicable<'a>(&'a self, user: Option<&'a str>, listener: u16) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().flatten().filter(move |r| {
            let who = match (&r.subject, user) {
                (Subject::Everyone, _) => true,
                (Subject::Anonymous, None) => true,
                (Subject::User(u), Some(name)) => u == name,
                _ => false,
            };
            who && r.listener.is_none_or(|l| l == listener)
        })
    }

    /// May this client subscribe to `filter`? Deny rules win: a filter that could receive any denied
    /// topic is refused, so `#` is refused as soon as anything is denied.
    pub fn may_subscribe(&self, user: Option<&str>, listener: u16, filter: &str) -> bool {
        if self.rules.is_none() {
            return true;
        }
        let filter = unshare(filter);
        let rules: Vec<&Rule> = self.applicable(user, listener).collect();
        !rules.iter().any(|r| r.deny && r.subscribe.iter().any(|d| overlaps(d, filter)))
            && rules.iter().any(|r| !r.deny && r.subscribe.iter().any(|a| contains(a, filter)))
    }

    /// May this client publish on `topic`?
    pub fn may_publish(&self, user: Option<&str>, listener: u16, topic: &str) -> bool {
        if self.rules.is_none() {
            return true;
        }
        let rules: Vec<&Rule> = self.applicable(user, listener).collect();
        !rules.iter().any(|r| r.deny && r.publish.iter().any(|d| contains(d, topic)))
            && rules.iter().any(|r| !r.deny && r.publish.iter().any(|a| contains(a, topic)))
    }
}

/// The filter inside a shared subscription (`$share/GROUP/FILTER`), which is what it receives.
fn unshare(filter: &str) -> &str {
    filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')).map_or(filter, |(_, f)| f)
}

fn wildcard(level: &str) -> bool {
    level == "#" || level == "+"
}

/// True if every topic `inner` (a filter or a topic name) can match is also matched by `outer`.
pub fn contains(outer: &str, inner: &str) -> bool {
    let o: Vec<&str> = outer.split('/').collect();
    let i: Vec<&str> = inner.split('/').collect();
    // A leading wildcard never matches a `$` topic; a `$`-named first level only matches itself.
    if inner.starts_with('$') && wildcard(o[0]) {
        return false;
    }
    for k in 0.. {
        match (o.get(k), i.get(k)) {
            // `#` matches its parent level and everything below it.
            (Some(&"#"), _) => return true,
            (None, None) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
            (Some(_), Some(&"#")) => return false,
            (Some(&"+"), Some(_)) => {}
            (Some(_), Some(&"+")) => return false,
            (Some(a), Some(b)) if a != b => return false,
            _ => {}
        }
    }
    unreachable!()
}

/// True if some topic is matched by both filters.
pub fn overlaps(a: &str, b: &str) -> bool {
    let x: Vec<&str> = a.split('/').collect();
    let y: Vec<&str> = b.split('/').collect();
    if (wildcard(x[0]) && y[0].starts_with('$')) || (wildcard(y[0]) && x[0].starts_with('$')) {
        return false;
    }
    for k in 0.. {
        match (x.get(k), y.get(k)) {
            (Some(&"#"), _) | (_, Some(&"#")) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(&"+"), Some(_)) | (Some(_), Some(&"+")) => {}
            (Some(p), Some(q)) if p != q => return false,
            _ => {}
        }
    }
    unreachable!()
}

/// Refusals, as the stats report them.
#[derive(Debug, Default, serde::Serialize)]
pub struct AclCounters {
    pub subscriptions_refused: AtomicU64,
    pub publishes_refused: AtomicU64,
}

/// rmqtt's subscribe and publish checks, decided by an `Acl`.
pub(super) struct AclHook {
    pub(super) acl: Arc<Acl>,
    pub(super) counters: Arc<AclCounters>,
}

/// Every refusal is logged up to this many times, then one in this many: a client retrying a
/// forbidden publish in a loop must not fill the journal.
const LOG_EVERY: u64 = 1000;

#[async_trait]
impl Handler for AclHook {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientSubscribeCheckAcl(s, sub) => {
                let user = s.id.username.as_deref();
                if self.acl.may_subscribe(user, s.id.lid, &sub.topic_filter) {
                    let ok = SubscribeAclResult::new_success(sub.opts.qos(), None);
                    return (false, Some(HookResult::SubscribeAclResult(ok)));
                }
                let n = self.counters.subscriptions_refused.fetch_add(1, Ordering::Relaxed);
                if n < LOG_EVERY || n % LOG_EVERY == 0 {
                    tracing::info!(client = %s.id.client_id, user = user.unwrap_or("(anonymous)"), filter = %sub.topic_filter,
                        refused_so_far = n + 1, "subscription refused by the broker ACL");
                }
                let no = SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized);
                (false, Some(HookResult::SubscribeAclResult(no)))
            }
            Parameter::MessagePublishCheckAcl(s, p) => {
                let user = s.id.username.as_deref();
                if self.acl.may_publish(user, s.id.lid, &p.topic) {
                    return (false, Some(HookResult::PublishAclResult(PublishAclResult::allow())));
                }
                let n = self.counters.publishes_refused.fetch_add(1, Ordering::Relaxed);
                if n < LOG_EVERY || n % LOG_EVERY == 0 {
                    tracing::info!(client = %s.id.client_id, user = user.unwrap_or("(anonymous)"), topic = %p.topic,
                        refused_so_far = n + 1, "publish dropped by the broker ACL");
                }
                // MQTT 3.1.1 has no way to say no to a publish: it is dropped, the client stays.
                (false, Some(HookResult::PublishAclResult(PublishAclResult::rejected(false, None))))
            }
            _ => (true, acc),
        }
    }
}

/// MQTT topic filter rules: non-empty, `#` only as the whole last level, `+` only as a whole level.
pub fn check_filter(f: &str) -> Result<(), String> {
    let levels: Vec<&str> = f.split('/').collect();
    let bad = f.is_empty()
        || levels
            .iter()
            .enumerate()
            .any(|(i, l)| (l.contains('#') && (*l != "#" || i + 1 != levels.len())) || (l.contains('+') && *l != "+"));
    if bad {
        Err(format!("`{f}` is not a topic filter (`+` stands for one whole level, `#` only as the last level)"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (allowed filter, requested filter, granted?)
    const CONTAINMENT: &[(&str, &str, bool)] = &[
        ("#", "#", true),
        ("#", "a", true),
        ("#", "a/b/c", true),
        ("#", "+", true),
        ("#", "+/#", true),
        ("#", "/", true),
        ("#", "$SYS/x", false),
        ("#", "$SYS/#", false),
        ("+", "#", false),
        ("+", "+", true),
        ("+", "a", true),
        ("+", "a/b", false),
        ("+", "", true),
        ("+", "$SYS", false),
        ("+", "a/", false),
        ("sensors/+", "sensors/#", false),
        ("sensors/+", "sensors/a", true),
        ("sensors/+", "sensors/+", true),
        ("sensors/+", "sensors/a/b", false),
        ("sensors/+", "sensors", false),
        ("sensors/+", "sensors/", true),
        ("sensors/#", "sensors", true),
        ("sensors/#", "sensors/#", true),
        ("sensors/#", "sensors/+/t", true),
        ("sensors/#", "sensors/a/b/c", true),
        ("sensors/#", "sensorsX/a", false),
        ("sensors/#", "+/a", false),
        ("sensors/#", "#", false),
        ("sensors/+/t", "sensors/+/t", true),
        ("sensors/+/t", "sensors/a/t", true),
        ("sensors/+/t", "sensors/#", false),
        ("sensors/+/t", "sensors/+/+", false),
        ("sensors/+/t", "sensors/a/t/x", false),
        ("+/+", "a//", false),
        ("+/+", "/", true),
        ("a//b", "a//b", true),
        ("a//b", "a/+/b", false),
        ("a/+/b", "a//b", true),
        ("a/", "a", false),
        ("a", "a/", false),
        ("a/#", "a/", true),
        ("$SYS/#", "$SYS/broker/load", true),
        ("$SYS/#", "$SYS", true),
        ("$SYS/#", "#", false),
        ("$SYS/+", "$SYS/x", true),
        ("+/x", "$SYS/x", false),
        ("$share/g/a", "$share/g/a", true),
    ];

    #[test]
    fn containment_table() {
        assert!(CONTAINMENT.len() >= 40);
        for (allowed, requested, want) in CONTAINMENT {
            assert_eq!(contains(allowed, requested), *want, "does `{allowed}` contain `{requested}`?");
        }
    }

    #[test]
    fn overlap_table() {
        for (a, b, want) in [
            ("#", "secret/#", true),
            ("#", "$SYS/#", false),
            ("+", "$SYS", false),
            ("+/#", "secret", true),
            ("a/+", "+/b", true),
            ("a/+", "b/+", false),
            ("a", "a/#", true),
            ("a", "a/+", false),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("$SYS/#", "$SYS/x", true),
        ] {
            assert_eq!(overlaps(a, b), want, "`{a}` and `{b}`");
            assert_eq!(overlaps(b, a), want, "`{b}` and `{a}`");
        }
    }

    /// Whatever `contains` says must agree with matching on concrete topics.
    #[test]
    fn containment_agrees_with_matching_on_sample_topics() {
        let topics =
            ["a", "a/b", "a/b/c", "", "/", "a/", "/a", "$SYS", "$SYS/x", "sensors", "sensors/a", "sensors/a/t"];
        let filters = ["#", "+", "a/#", "a/+", "+/+", "+/#", "$SYS/#", "sensors/+", "sensors/#", "sensors/+/t", "a"];
        for outer in filters {
            for inner in filters {
                if contains(outer, inner) {
                    for t in topics {
                        assert!(!contains(inner, t) || contains(outer, t), "`{outer}` ⊇ `{inner}` but not for `{t}`");
                    }
                }
                let shared = topics.iter().any(|t| contains(outer, t) && contains(inner, t));
                if shared {
                    assert!(overlaps(outer, inner), "`{outer}` and `{inner}` share a topic");
                }
            }
        }
    }

    fn rule(subject: Subject, deny: bool, sub: &[&str], publ: &[&str]) -> Rule {
        Rule {
            subject,
            listener: None,
            deny,
            subscribe: sub.iter().map(|s| s.to_string()).collect(),
            publish: publ.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn deny_wins_and_subjects_are_kept_apart() {
        let acl = Acl::new(vec![
            rule(Subject::Everyone, false, &["#"], &[]),
            rule(Subject::Everyone, true, &["secret/#"], &[]),
            rule(Subject::User("ops".into()), false, &[], &["cmd/#"]),
            Rule { listener: Some(1884), ..rule(Subject::Anonymous, false, &[], &["lan/#"]) },
        ]);
        assert!(acl.may_subscribe(Some("x"), 1883, "sensors/#"));
        assert!(!acl.may_subscribe(Some("x"), 1883, "#"), "`#` would receive secret/…");
        assert!(!acl.may_subscribe(None, 1883, "secret/a"));
        assert!(!acl.may_subscribe(None, 1883, "+/a"), "+/a would receive secret/a");
        assert!(acl.may_subscribe(None, 1883, "sensors/+"));
        assert!(acl.may_publish(Some("ops"), 1883, "cmd/a"));
        assert!(!acl.may_publish(Some("x"), 1883, "cmd/a"));
        assert!(!acl.may_publish(Some("ops"), 1883, "sensors/a"));
        assert!(acl.may_publish(None, 1884, "lan/x"));
        assert!(!acl.may_publish(None, 1883, "lan/x"), "anonymous rule is for listener 1884 only");
        assert!(!acl.may_publish(Some("ops"), 1884, "lan/x"), "anonymous rules are not for users");
        assert!(acl.may_subscribe(None, 1883, "$share/g/sensors/#"));
        assert!(!acl.may_subscribe(None, 1883, "$share/g/secret/#"));
        assert!(Acl::open().may_subscribe(None, 1883, "#"));
    }
}
