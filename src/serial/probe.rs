//! `check --devices`: whether each port's device is there and could be opened by a given user, found
//! without opening it (a running gateway holds its devices exclusively, and opening a serial port
//! can reset the board behind it).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use nix::unistd::{Gid, Group, User};

use super::port::Device;

/// How long a device server gets to accept a test connection: a LAN host answers in milliseconds.
const TCP_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What was found for one device.
#[derive(Debug, PartialEq, Eq)]
pub struct Probe {
    /// The device can be used as configured.
    pub ok: bool,
    pub text: String,
}

fn bad(text: impl Into<String>) -> Probe {
    Probe { ok: false, text: text.into() }
}

/// Checks `device` for `user` (who will run the gateway: `ser2mqtt` under the packaged unit).
pub async fn probe(device: &Device, user: &User) -> Probe {
    match device {
        Device::Serial(path) => serial(path, user),
        Device::Tcp { host, port } => {
            match tokio::time::timeout(TCP_PROBE_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), *port))).await
            {
                Ok(Ok(_)) => Probe { ok: true, text: "the device server accepts connections".into() },
                Ok(Err(e)) => bad(format!("cannot connect: {e}")),
                Err(_) => bad(format!("no answer within {TCP_PROBE_TIMEOUT:?}: is the device server on the network?")),
            }
        }
    }
}

fn serial(path: &Path, user: &User) -> Probe {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pi = ["/dev/serial0", "/dev/ttyAMA0", "/dev/ttyS0"].iter().any(|p| path == Path::new(p));
            let hint = if pi {
                "on a Raspberry Pi, enable the UART and disable the serial console (`sudo raspi-config` → \
                 Interface Options → Serial Port: login shell No, hardware Yes) and reboot"
            } else {
                "is the adapter plugged in? (`ls -l /dev/serial/by-id/` lists the ones present, `dmesg | tail` \
                 shows the last one plugged in)"
            };
            return bad(format!("missing: {hint}"));
        }
        Err(e) => return bad(format!("cannot be examined: {e}")),
    };
    let shown = match std::fs::canonicalize(path) {
        Ok(real) if real != path => format!(" ({})", real.display()),
        _ => String::new(),
    };
    if !meta.file_type().is_char_device() {
        return bad(format!("exists{shown} but is not a character device: the path is not a serial port"));
    }
    let groups = nix::unistd::getgrouplist(&std::ffi::CString::new(user.name.as_str()).unwrap_or_default(), user.gid)
        .unwrap_or_else(|_| vec![user.gid]);
    let mode = meta.mode();
    let rw = |shift: u32| (mode >> shift) & 0o6 == 0o6;
    let allowed = user.uid.is_root()
        || (meta.uid() == user.uid.as_raw() && rw(6))
        || (groups.contains(&Gid::from_raw(meta.gid())) && rw(3))
        || rw(0);
    if allowed {
        return Probe { ok: true, text: format!("a serial device{shown}, readable and writable by `{}`", user.name) };
    }
    let group = match Group::from_gid(Gid::from_raw(meta.gid())) {
        Ok(Some(g)) => g.name,
        _ => meta.gid().to_string(),
    };
    bad(format!(
        "a serial device{shown}, but `{u}` may not open it: `sudo usermod -aG {group} {u}` (then log in again or \
         restart the service)",
        u = user.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> User {
        User::from_uid(nix::unistd::Uid::effective()).unwrap().unwrap()
    }

    #[tokio::test]
    async fn missing_not_a_tty_and_a_real_tty() {
        let missing = probe(&Device::Serial("/dev/ttyUSB_not_here".into()), &me()).await;
        assert!(!missing.ok && missing.text.starts_with("missing: is the adapter plugged in?"), "{missing:?}");
        let file = tempfile::NamedTempFile::new().unwrap();
        let regular = probe(&Device::Serial(file.path().into()), &me()).await;
        assert!(!regular.ok && regular.text.contains("not a character device"), "{regular:?}");
        let tty = probe(&Device::Serial("/dev/null".into()), &me()).await;
        assert!(tty.ok, "{tty:?}");
    }

    #[tokio::test]
    async fn a_device_server_is_tried_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = probe(&Device::Tcp { host: "127.0.0.1".into(), port }, &me()).await;
        assert!(up.ok, "{up:?}");
        drop(listener);
        let down = probe(&Device::Tcp { host: "127.0.0.1".into(), port }, &me()).await;
        assert!(!down.ok && down.text.starts_with("cannot connect"), "{down:?}");
    }
}
