//! Entry point: parse the command line, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ser2mqtt::cli::{Cli, Command, QueueCommand};
use ser2mqtt::config::{self, LoadError};
use ser2mqtt::supervisor::{self, Notifier, Supervision};
use tokio_util::sync::CancellationToken;

/// sysexits EX_USAGE: the configuration (what the user typed) is wrong. The unit does not restart
/// on it (`RestartPreventExitStatus=64`): the file does not fix itself.
const EXIT_BAD_CONFIG: u8 = 64;
/// sysexits EX_UNAVAILABLE: a listener's address is taken (often a Mosquitto on 1883). Restarted,
/// within the unit's start limit, since a previous instance may still be letting go of it.
const EXIT_ADDRESS_BUSY: u8 = 69;
/// sysexits EX_CANTCREAT: the state directory or its queue cannot be opened.
const EXIT_STATE: u8 = 73;
/// sysexits EX_TEMPFAIL: anything else; worth a restart.
const EXIT_OTHER: u8 = 75;

/// How long `simulate` waits for its device to appear.
const SIMULATE_DEVICE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Async worker threads: one unless `TOKIO_WORKER_THREADS` says otherwise. The gateway is a
/// pipeline of short tasks (port reader → publisher → broker session → front door), and handing each
/// reading between cores costs more than the second core gives: on the 2-core bench machine one
/// worker took 18 µs of CPU per reading at 16 ports × 100 Hz against 22 µs with two, and delivered
/// 123k readings/s at full speed against 87k (bench/board.sh, bench/throughput.sh). SQLite and
/// password hashing run on the blocking pool either way.
fn worker_threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(1)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads())
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            ser2mqtt::logging::fatal(&format!("ser2mqtt: error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open descriptors to the hard limit (the soft default, 1,024, is what
/// one busy listener needs alone: three descriptors per client), and returns the limit in force.
fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 0 };
    let in_force = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() { hard } else { soft };
    // rlim_t is 32 bits on armv7 and 64 bits on x86_64 and aarch64.
    #[allow(clippy::useless_conversion)]
    u64::from(in_force)
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { config, devices, user } => Ok(match config::load(&config) {
            Ok(c) if devices => check_devices(&c, user.as_deref()).await?,
            Ok(c) => {
                print!("{}", ser2mqtt::config::summary::describe(&c, &config));
                println!("(`check --devices` also checks that each port's device is there and may be opened)");
                ExitCode::SUCCESS
            }
            Err(e) => report(e),
        }),
        Command::Run { config } => {
            let c = match config::load(&config) {
                Ok(c) => c,
                Err(e) => return Ok(report(e)),
            };
            ser2mqtt::logging::init(c.log_level.as_deref());
            let fds = raise_descriptor_limit();
            tracing::info!(config = %config.display(), ports = c.ports.len(), maps = c.maps.len(), max_open_files = fds, "starting");
            let sup = Supervision {
                config_path: Some(config.clone()),
                notifier: Notifier::from_env(),
                watchdog: supervisor::watchdog_from_env(),
            };
            match supervisor::run(c, sup, shutdown_signal()).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    let code = exit_code(&e);
                    let text = format!("{:#}", anyhow::Error::from(e));
                    ser2mqtt::logging::fatal(&format!("ser2mqtt: cannot start: {text}"));
                    // What `systemctl status` shows for the failed unit.
                    Notifier::from_env().notify(&format!("STATUS=failed: {text}"));
                    Ok(ExitCode::from(code))
                }
            }
        }
        Command::Queue { command: QueueCommand::Status { config, json } } => {
            let c = match config::load(&config) {
                Ok(c) => c,
                Err(e) => return Ok(report(e)),
            };
            let path = c.store_path().context("the configuration has no `upstream:` and no `gateway.state_dir`")?;
            if !path.exists() {
                anyhow::bail!("no queue at {} yet (the gateway creates it on start)", path.display());
            }
            let s = ser2mqtt::store::Store::read_status(&path).context("reading the queue")?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!("queue      {}", path.display());
                println!("depth      {} messages, {} bytes", s.depth, s.bytes);
                match s.oldest_age_s {
                    Some(a) => println!("oldest     {a:.1} s ago"),
                    None => println!("oldest     (empty)"),
                }
                println!("accepted   {}   delivered {}   refused by the broker {}", s.accepted, s.delivered, s.refused);
                println!(
                    "dropped    {} (queue full)   {} (max_age)   rejected {} (queue full)   corrupted {}   not queued {}",
                    s.dropped_full, s.dropped_age, s.rejected_full, s.corrupted, s.not_queued
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "an empty password is not allowed");
            let hash =
                ser2mqtt::local_broker::hash_password(password).map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
            println!("{hash}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Tap { config, port, broker, username, password, count } => {
            let c = match config::load(&config) {
                Ok(c) => c,
                Err(e) => return Ok(report(e)),
            };
            let opts = ser2mqtt::live::client::TapOptions { port, broker, username, password, count };
            ser2mqtt::live::client::run(&c, opts, |line| println!("{line}")).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Try { config, port, hex, line } => {
            let c = match config::load(&config) {
                Ok(c) => c,
                Err(e) => return Ok(report(e)),
            };
            let input = match (hex, line) {
                (Some(h), _) => {
                    ser2mqtt::bytes::parse_hex(&h).with_context(|| format!("`{h}` is not hex bytes, e.g. \"42 4D\""))?
                }
                (None, Some(l)) => l.into_bytes(),
                (None, None) => unreachable!("clap requires one"),
            };
            match ser2mqtt::cli::try_frame(&c, &port, &input) {
                Ok(lines) => {
                    for l in lines {
                        println!("{l}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("ser2mqtt try: {e}");
                    Ok(ExitCode::from(64))
                }
            }
        }
        Command::Manpage => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()).context("writing the manual page")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { listen } => {
            ser2mqtt::logging::init(None);
            ser2mqtt::demo::run(listen, shutdown_signal()).await.context("demo failed")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate { sensor, device, rate, count, baud } => {
            ser2mqtt::logging::init(None);
            use tokio_serial::SerialPortBuilderExt;
            // A device that does not exist yet is waited for: `socat … link=/tmp/ttyA &` started just
            // before (the README's example) creates its link a moment later. Ten seconds covers a
            // loaded machine; anything else (permissions, not a tty) fails at once.
            let deadline = tokio::time::Instant::now() + SIMULATE_DEVICE_WAIT;
            let port = loop {
                match tokio_serial::new(device.to_string_lossy(), baud).open_native_async() {
                    Ok(port) => break port,
                    Err(e)
                        if (e.kind == tokio_serial::ErrorKind::NoDevice
                            || matches!(e.kind, tokio_serial::ErrorKind::Io(std::io::ErrorKind::NotFound)))
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await
                    }
                    Err(e) => return Err(e).with_context(|| format!("cannot open {}", device.display())),
                }
            };
            let stop = CancellationToken::new();
            let s = stop.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                s.cancel();
            });
            if sensor == ser2mqtt::simulate::SensorKind::Sdm120 {
                eprintln!("ser2mqtt simulate: an SDM120 meter as Modbus slave 1 on {}", device.display());
                ser2mqtt::simulate::meter::serve(port, vec![1], stop).await?;
                return Ok(ExitCode::SUCCESS);
            }
            let rate = rate.unwrap_or(sensor.natural_rate());
            let n = ser2mqtt::simulate::run(sensor, port, rate, count, stop)
                .await
                .with_context(|| format!("writing to {}", device.display()))?;
            eprintln!("ser2mqtt simulate: wrote {n} frames");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn report(e: LoadError) -> ExitCode {
    let text = match &e {
        LoadError::Invalid(errors) => errors.to_string(),
        e @ LoadError::Read { .. } => format!("ser2mqtt: {e}"),
    };
    ser2mqtt::logging::fatal(&text);
    Notifier::from_env().notify(&format!("STATUS=failed: {}", config::first_problem(&e)));
    ExitCode::from(EXIT_BAD_CONFIG)
}

/// The exit code for a gateway that could not start.
fn exit_code(e: &ser2mqtt::gateway::GatewayError) -> u8 {
    use ser2mqtt::gateway::GatewayError;
    use ser2mqtt::local_broker::BrokerError;
    match e {
        GatewayError::Broker(BrokerError::Bind { source, .. })
            if source.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
            }) =>
        {
            EXIT_ADDRESS_BUSY
        }
        GatewayError::Metrics { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse => EXIT_ADDRESS_BUSY,
        GatewayError::Store(_) => EXIT_STATE,
        _ => EXIT_OTHER,
    }
}

/// Completes on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("cannot install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `check --devices`: one line per port; exit 69 (EX_UNAVAILABLE) if any device is not usable.
async fn check_devices(c: &config::Config, user: Option<&str>) -> anyhow::Result<ExitCode> {
    use nix::unistd::{Uid, User};
    let user = match user {
        Some(name) => User::from_name(name)?.with_context(|| format!("no user named `{name}` on this system"))?,
        None => User::from_uid(Uid::effective())?.context("the current user has no name")?,
    };
    let mut all_ok = true;
    for port in &c.ports {
        let found = ser2mqtt::serial::probe::probe(&port.device, &user).await;
        all_ok &= found.ok;
        println!("{} {}: {}: {}", if found.ok { "ok  " } else { "FAIL" }, port.name, port.device, found.text);
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(69) })
}
