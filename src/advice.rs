//! What to do about an operating-system error on a path the gateway needs (a serial device, the
//! config file, the state directory): the user, the group and the command that fix it.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

/// The user this process runs as, by name if it has one.
pub fn current_user() -> String {
    let uid = Uid::effective();
    match User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => format!("uid {uid}"),
    }
}

fn group_of(path: &Path) -> Option<String> {
    let gid = std::fs::metadata(path).ok()?.gid();
    Some(match Group::from_gid(Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    })
}

/// Advice for a serial device that would not open.
pub fn device(path: &Path, kind: ErrorKind) -> Option<String> {
    let user = current_user();
    match kind {
        ErrorKind::NotFound => Some(
            "no such device: is the adapter plugged in? (`ls -l /dev/serial/by-id/` lists the ones present)".into(),
        ),
        ErrorKind::PermissionDenied => {
            let group = group_of(path).unwrap_or_else(|| "dialout".into());
            Some(format!(
                "`{user}` may not open it: add the user to the device's group (`sudo usermod -aG {group} {user}`) \
                 and restart the gateway; under the packaged unit, also check its DeviceAllow= list"
            ))
        }
        _ => None,
    }
}

/// Advice for a file or directory the gateway must read or write.
pub fn file(path: &Path, kind: ErrorKind, writable: bool) -> Option<String> {
    let user = current_user();
    match kind {
        ErrorKind::PermissionDenied => {
            let need = if writable { "writable" } else { "readable" };
            let group = group_of(path).unwrap_or_else(|| user.clone());
            Some(if writable {
                format!("make it {need} by `{user}` (e.g. `sudo chown -R {user}: {}`)", path.display())
            } else {
                format!(
                    "make it {need} by `{user}` (e.g. `sudo chgrp {group} {p} && sudo chmod g+r {p}` with `{user}` \
                     in group `{group}`)",
                    p = path.display()
                )
            })
        }
        ErrorKind::NotFound => Some(format!("no such file or directory: {}", path.display())),
        ErrorKind::ReadOnlyFilesystem => {
            Some("the filesystem is read-only: point `gateway.state_dir` at a writable one".into())
        }
        ErrorKind::StorageFull => Some("the filesystem is full: free space on it".into()),
        _ => None,
    }
}
