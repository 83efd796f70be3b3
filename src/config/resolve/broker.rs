//! `broker:` → `BrokerSettings`: listeners, users, ACL rules and limits, with the safe defaults
//! (loopback only, anonymous only where no users exist).

use super::*;

pub(super) fn resolve_broker(raw: &RawBroker, p: &mut Problems) -> Option<BrokerSettings> {
    let start = p.count();
    let mut listeners = Vec::new();
    let raw_listeners = if raw.listeners.is_empty() {
        vec![RawListener { bind: DEFAULT_LISTENER.into(), allow_anonymous: None, tls: None, websocket: false }]
    } else {
        raw.listeners.clone()
    };
    for (i, l) in raw_listeners.iter().enumerate() {
        let path = format!("broker.listeners[{i}]");
        let Ok(addr) = l.bind.parse::<SocketAddr>() else {
            p.add(
                &format!("{path}.bind"),
                format!("`{}` is not ADDR:PORT, e.g. `0.0.0.0:1883` or `[::]:1883`", l.bind),
            );
            continue;
        };
        let loopback = addr.ip().is_loopback();
        if !loopback && raw.users.is_empty() && l.allow_anonymous != Some(true) {
            p.add(
                &path,
                format!(
                    "listener {addr} is reachable from the network but no `broker.users` are configured: add users, \
                     or set `allow_anonymous: true` to let anyone on the network connect"
                ),
            );
        }
        // Without users, a loopback listener is open to local clients (as a fresh Mosquitto 2 is);
        // once users exist, anonymous access is only what is asked for.
        let allow_anonymous = l.allow_anonymous.unwrap_or(loopback && raw.users.is_empty());
        let tls = l.tls.as_ref().and_then(|t| {
            let mut found = crate::settings::Problems::default();
            let built = t.server_config(&mut found);
            place(p, &format!("{path}.tls"), found);
            built
        });
        listeners.push(ListenerSettings { addr, allow_anonymous, tls, websocket: l.websocket });
    }
    let mut names = HashSet::new();
    for (i, u) in raw.users.iter().enumerate() {
        if u.username.is_empty() || !names.insert(u.username.as_str()) {
            p.add(&format!("broker.users[{i}].username"), "usernames must be non-empty and unique");
        }
        match (&u.password_hash, &u.password) {
            (Some(h), None) => {
                if let Err(e) = crate::local_broker::check_hash(h) {
                    p.add(
                        &format!("broker.users[{i}].password_hash"),
                        format!("not an argon2 hash ({e}); make one with `ser2mqtt hash-password`"),
                    );
                }
            }
            (None, Some(pw)) if pw.is_empty() => {
                p.add(&format!("broker.users[{i}].password"), "an empty password is not allowed")
            }
            (None, Some(_)) => {}
            _ => p.add(
                &format!("broker.users[{i}]"),
                "give exactly one of `password_hash` (from `ser2mqtt hash-password`) or `password`",
            ),
        }
    }
    let mut acl = Vec::new();
    for (i, r) in raw.acl.iter().enumerate() {
        let path = format!("broker.acl[{i}]");
        let rule_start = p.count();
        let subject = match (&r.user, r.anonymous) {
            (Some(u), false) if u == "*" => Subject::Everyone,
            (Some(u), false) => Subject::User(u.clone()),
            (None, true) => Subject::Anonymous,
            _ => {
                p.add(&path, "give exactly one of `user` (a name, or `\"*\"` for every client) or `anonymous: true`");
                Subject::Everyone
            }
        };
        let listener = r.listener.as_ref().and_then(|want| {
            let found = raw_listeners.iter().position(|l| &l.bind == want);
            if found.is_none() {
                let binds: Vec<String> = raw_listeners.iter().map(|l| format!("`{}`", l.bind)).collect();
                p.add(
                    &format!("{path}.listener"),
                    format!("`{want}` is not the `bind` of a listener; the listeners are {}", binds.join(", ")),
                );
            }
            found
        });
        if r.anonymous {
            let open = |l: &ListenerSettings| l.allow_anonymous;
            let reachable = match listener {
                Some(k) => listeners.get(k).is_some_and(open),
                None => listeners.iter().any(open),
            };
            if !reachable && p.count() == rule_start {
                p.add(
                    &path,
                    "no listener this rule applies to has `allow_anonymous: true`, so no anonymous client can use it",
                );
            }
        }
        if let Subject::User(u) = &subject {
            if !names.contains(u.as_str()) {
                let hint =
                    suggest(u, names.iter().copied()).map(|s| format!(", did you mean `{s}`?")).unwrap_or_default();
                p.add(
                    &format!("{path}.user"),
                    format!("`{u}` is not in `broker.users`{hint} (or use `\"*\"` for every client)"),
                );
            }
        }
        for (kind, filters) in [("subscribe", &r.subscribe), ("publish", &r.publish)] {
            for (j, f) in filters.iter().enumerate() {
                if let Err(e) = check_filter(f) {
                    p.add(&format!("{path}.{kind}[{j}]"), e);
                }
            }
        }
        if r.subscribe.is_empty() && r.publish.is_empty() {
            p.add(&path, "the rule names no `subscribe` or `publish` filters");
        }
        acl.push(AclRule {
            subject,
            listener,
            deny: r.deny,
            subscribe: r.subscribe.clone(),
            publish: r.publish.clone(),
        });
    }
    let nonzero = |v: Option<usize>, d: NonZeroUsize, key: &str, p: &mut Problems| match v {
        None => d,
        Some(n) => NonZeroUsize::new(n).unwrap_or_else(|| {
            p.add(&format!("broker.{key}"), "must be at least 1");
            d
        }),
    };
    let max_queue_len = nonzero(raw.max_queue_len, DEFAULT_MAX_QUEUE_LEN, "max_queue_len", p);
    let max_sessions = nonzero(raw.max_sessions, DEFAULT_MAX_SESSIONS, "max_sessions", p);
    let d = default_front_limits();
    let max_connections =
        nonzero(raw.max_connections, NonZeroUsize::new(d.max_connections).unwrap(), "max_connections", p);
    let connect_timeout = raw.connect_timeout.unwrap_or(d.connect_timeout);
    if connect_timeout.is_zero() {
        p.add("broker.connect_timeout", "must be longer than 0s (10s is the default)");
    }
    let bytes = |v: Option<bytesize::ByteSize>, d: usize, key: &str, min: usize, p: &mut Problems| {
        let n = v.map_or(d, |b| b.as_u64() as usize);
        if n < min {
            p.add(&format!("broker.{key}"), format!("must be at least {min} bytes"));
        }
        n
    };
    // 2 bytes is the smallest MQTT packet; 268,435,455 + 5 the largest the length field can say.
    let max_packet_size = bytes(raw.max_packet_size, d.max_packet_size, "max_packet_size", 64, p).min(268_435_460);
    let max_client_buffer = bytes(raw.max_client_buffer, d.max_client_buffer, "max_client_buffer", 1024, p);
    // At most max_queue_len by default: a new `#` subscriber receives every retained message only
    // if they all fit in its queue at once.
    let max_retained = nonzero(raw.max_retained, max_queue_len, "max_retained", p);
    if max_retained > max_queue_len {
        p.add(
            "broker.max_retained",
            format!(
                "{max_retained} is more than `max_queue_len` ({max_queue_len}): a subscriber to `#` would receive only \
                 {max_queue_len} of them; raise `max_queue_len` too"
            ),
        );
    }
    let max_retained_bytes = bytes(raw.max_retained_bytes, DEFAULT_MAX_RETAINED_BYTES, "max_retained_bytes", 1024, p);
    let front =
        FrontLimits { max_connections: max_connections.get(), connect_timeout, max_packet_size, max_client_buffer };
    (p.count() == start).then(|| BrokerSettings {
        listeners,
        users: raw
            .users
            .iter()
            .map(|u| {
                let secret = match (&u.password_hash, &u.password) {
                    (Some(h), _) => Secret::Hash(h.clone()),
                    (None, pw) => Secret::Plain(pw.clone().unwrap_or_default()),
                };
                (u.username.clone(), secret)
            })
            .collect(),
        acl,
        max_queue_len,
        max_sessions,
        front,
        max_retained,
        max_retained_bytes,
    })
}
