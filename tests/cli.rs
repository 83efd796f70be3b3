//! The binary as a user runs it: `check` exit codes and output, `demo` readings on a real subscriber,
//! `simulate` writing real frames into a pty.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rumqttc::QoS;
use tokio::io::AsyncReadExt;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_ser2mqtt");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_every_shipped_config_and_shows_example_messages() {
    for entry in std::fs::read_dir(root().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(": valid"), "{stdout}");
        assert!(stdout.contains("  sensors/"), "an example topic is shown: {stdout}");
    }
    // Numbers are shown as numbers in example JSON payloads, text as text.
    let out = Command::new(BIN).args(["check", "--config"]).arg(root().join("configs/pms5003.yaml")).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#"{"pm1_0_cf1":<pm1_0_cf1>,"#));
}

#[test]
fn check_shows_each_when_value_with_the_fields_its_frames_have() {
    let out = Command::new(BIN).args(["check", "--config"]).arg(root().join("configs/nmea-gps.yaml")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |topic: &str| {
        stdout.lines().find(|l| l.trim_start().starts_with(topic)).unwrap_or_else(|| panic!("{topic}: {stdout}"))
    };
    // The GGA example has GGA's fields (and the transformed position as a number), not RMC's.
    let gga = line("sensors/garden-pi/gps/GGA ");
    assert!(gga.contains(r#""sentence":"GGA","fix_time":"<fix_time>","lat":<lat>,"#), "{gga}");
    assert!(gga.contains("satellites") && !gga.contains("speed_knots") && !gga.contains("status"), "{gga}");
    let rmc = line("sensors/garden-pi/gps/RMC ");
    assert!(rmc.contains("speed_knots") && !rmc.contains("satellites"), "{rmc}");
    assert!(stdout.contains("  when sentence is RMC:"), "{stdout}");
}

#[test]
fn check_exits_64_and_names_file_line_and_key() {
    let file = root().join("tests/broken_configs/01-unknown-key-typo.yaml");
    let out = Command::new(BIN).args(["check", "--config"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:5:5: ports[0].baud: unknown key `baud`, did you mean `baud_rate`?", file.display());
    assert!(stderr.contains(&want), "{stderr}");
    // `run` refuses the same file with the same code, before starting anything.
    let out = Command::new(BIN).args(["run", "--config"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn version_is_printed() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("ser2mqtt {}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn demo_publishes_simulated_readings_within_seconds_and_stops_on_sigterm() {
    let port = free_port();
    let mut child = ChildGuard(
        Command::new(BIN)
            .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let a = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(a).await;
    let mut sub = subscribe(
        a,
        &[
            ("sensors/demo/gps/satellites", QoS::AtLeastOnce),
            ("sensors/demo/air/pm2_5", QoS::AtLeastOnce),
            ("sensors/demo/co2/co2", QoS::AtLeastOnce),
            ("sensors/demo/sdm120/voltage", QoS::AtLeastOnce),
            ("sensors/demo/air_passive/pm2_5", QoS::AtLeastOnce),
        ],
    )
    .await;
    // The polled CO2 sensor and the Modbus meter answer at once too: they are first asked when
    // their ports open.
    let mut topics = std::collections::BTreeSet::new();
    while topics.len() < 5 {
        let g = sub.next_on("sensors/demo/").await;
        assert!(g.payload.parse::<f64>().is_ok(), "numeric reading: {g:?}");
        topics.insert(g.topic);
    }
    let status = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    let code = tokio::task::spawn_blocking(move || child.0.wait().map(|s| s.code())).await.unwrap().unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn simulate_writes_valid_sds011_frames_to_a_device() {
    let mut p = pty();
    let out = Command::new(BIN)
        .args(["simulate", "--sensor", "sds011", "--rate", "0", "--count", "3", "--device"])
        .arg(&p.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut buf = [0u8; 30];
    tokio::time::timeout(WAIT, p.master.read_exact(&mut buf)).await.unwrap().unwrap();
    for f in buf.chunks(10) {
        assert_eq!((f[0], f[1], f[9]), (0xAA, 0xC0, 0xAB));
        assert_eq!(f[2..8].iter().fold(0u8, |a, b| a.wrapping_add(*b)), f[8]);
    }
}

#[tokio::test]
async fn simulate_waits_for_a_device_that_appears_a_moment_later() {
    // As in the README: `socat … link=/tmp/ttyA &` then at once `ser2mqtt simulate --device /tmp/ttyA`.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyA");
    let child = Command::new(BIN)
        .args(["simulate", "--sensor", "sds011", "--rate", "0", "--count", "2", "--device"])
        .arg(&link)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut p = pty();
    std::os::unix::fs::symlink(&p.path, &link).unwrap();
    let mut buf = [0u8; 20];
    tokio::time::timeout(WAIT, p.master.read_exact(&mut buf)).await.expect("frames in time").unwrap();
    assert_eq!((buf[0], buf[1], buf[9]), (0xAA, 0xC0, 0xAB));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn hash_password_prints_an_argon2_hash_that_check_accepts() {
    use std::io::Write;
    let mut child =
        Command::new(BIN).arg("hash-password").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, format!("broker:\n  users:\n    - {{ username: lan, password_hash: \"{hash}\" }}\n"))
        .unwrap();
    let check = Command::new(BIN).args(["check", "--config"]).arg(&file).output().unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", String::from_utf8_lossy(&check.stderr));
}

/// `run` with a config whose listener address another program holds: exit 69 (the unit restarts it
/// within its start limit), the cause on stderr; under journald each line carries `<3>` (error).
#[tokio::test]
async fn run_exits_69_when_the_metrics_address_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("g.yaml");
    std::fs::write(
        &conf,
        format!("broker: {{ listeners: [{{ bind: \"127.0.0.1:0\" }}] }}\nmetrics: {{ bind: \"{busy}\" }}\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ser2mqtt")).args(["run", "--config"]).arg(&conf).output().unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen for /metrics on {busy}")), "{err}");
}

#[tokio::test]
async fn run_exits_69_when_the_listener_address_is_taken_and_says_so_at_error_priority() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("g.yaml");
    std::fs::write(
        &conf,
        format!("gateway: {{ name: gw }}\nbroker: {{ listeners: [{{ bind: \"127.0.0.1:{port}\" }}] }}\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ser2mqtt")).args(["run", "--config"]).arg(&conf).output().unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port}")) && err.contains("in use"), "{err}");

    // With stderr connected to the journal (JOURNAL_STREAM names stderr's device and inode).
    let file = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let meta = std::os::unix::fs::MetadataExt::dev(&file.metadata().unwrap());
    let ino = std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap());
    let status = Command::new(env!("CARGO_BIN_EXE_ser2mqtt"))
        .args(["run", "--config"])
        .arg(&conf)
        .env("JOURNAL_STREAM", format!("{meta}:{ino}"))
        .stderr(file)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(69));
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    let fatal: Vec<&str> = err.lines().filter(|l| l.contains("cannot listen")).collect();
    assert!(!fatal.is_empty() && fatal.iter().all(|l| l.starts_with("<3>")), "{err}");
}

#[test]
fn run_exits_64_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("g.yaml");
    std::fs::write(&conf, "gateway: { name: gw }\nports: nope\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ser2mqtt")).args(["run", "--config"]).arg(&conf).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("g.yaml:2:"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn check_devices_says_which_device_is_there_and_which_is_missing() {
    let pty = pty();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("c.yaml");
    let port = |name: &str, device: &str| {
        format!(
            "  - name: {name}\n    device: {device}\n    framing: {{ type: lines }}\n    decoder: {{ type: csv, columns: [a] }}\n"
        )
    };
    let ports = port("here", &pty.path.display().to_string()) + &port("gone", "/dev/ttyUSB_ser2mqtt_test_missing");
    std::fs::write(&conf, format!("ports:\n{ports}")).unwrap();
    let out = Command::new(BIN).args(["check", "--devices", "--config"]).arg(&conf).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(69), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("ok   here: /dev/pts/") && lines[0].contains("readable and writable by"), "{stdout}");
    assert!(lines[1].starts_with("FAIL gone: /dev/ttyUSB_ser2mqtt_test_missing: missing:"), "{stdout}");
    // Without the missing port, all is well.
    std::fs::write(&conf, format!("ports:\n{}", port("here", &pty.path.display().to_string()))).unwrap();
    let out = Command::new(BIN).args(["check", "--devices", "--config"]).arg(&conf).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn try_shows_what_each_step_makes_of_a_frame() {
    let conf = root().join("configs/nmea-gps.yaml");
    let run = |line: &str| {
        let out =
            Command::new(BIN).args(["try", "--port", "gps", "--line", line, "--config"]).arg(&conf).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run("$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47");
    assert_eq!(code, Some(0));
    assert!(out.contains("fields: talker=GP, sentence=GGA, fix_time=123519, lat=48.1173,"), "{out}");
    assert!(out.contains("publish sensors/garden-pi/gps/lat  48.1173  (qos 1, retain true)"), "{out}");
    let (_, out, _) = run("$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48");
    assert!(
        out.starts_with("garbled: 67 bytes dropped (checksum mismatch: frame says 0x48, bytes give 0x47)"),
        "{out}"
    );
    assert!(!out.contains("publish"), "{out}");
    let (_, out, _) = run("x");
    assert_eq!(out.trim(), "garbled: 3 bytes dropped (checksum required but missing)");
    let out = Command::new(BIN).args(["try", "--port", "gsp", "--line", "x", "--config"]).arg(&conf).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown port `gsp`, did you mean `gps`?"));
}
