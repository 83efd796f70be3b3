//! The documentation as a user follows it: every complete config in README.md and docs/ passes
//! `check`, every `ser2mqtt …` command line in them parses, and the README's simulator example runs
//! as written and delivers readings to `mosquitto_sub`.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use ser2mqtt::cli::Cli;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md, with their text.
fn pages() -> Vec<(PathBuf, String)> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs")).unwrap().map(|e| e.unwrap().path()).collect();
    docs.sort();
    files.extend(docs.into_iter().filter(|p| p.extension().is_some_and(|e| e == "md")));
    files.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap())).collect()
}

/// (language, body, the line before the fence) of every fenced code block.
fn blocks(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    let mut previous = "";
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
            out.push((lang.to_string(), body.join("\n") + "\n", previous.to_string()));
        }
        previous = line;
    }
    out
}

#[test]
fn every_complete_config_in_the_docs_passes_check() {
    let mut checked = 0;
    for (file, text) in pages() {
        for (lang, body, _) in blocks(&text) {
            // A block with `ports:` and no elided value (`…`) is a config a reader can copy whole.
            if lang != "yaml" || !body.lines().any(|l| l.starts_with("ports:")) || body.contains('…') {
                continue;
            }
            if let Err(e) = ser2mqtt::config::parse(&body, &file) {
                panic!("a config in {} does not pass check:\n{e}\n{body}", file.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 7, "only {checked} configs found");
}

/// `ser2mqtt` command lines in code (shell blocks, and inline spans with an option), without `sudo`,
/// up to a pipe, `&`, `;` or redirection.
fn command_lines(text: &str) -> Vec<String> {
    let mut candidates: Vec<String> = Vec::new();
    for (lang, body, _) in blocks(text) {
        if lang == "sh" {
            candidates.extend(body.lines().map(String::from));
        }
    }
    // Inline spans with an option are commands to type (`ser2mqtt simulate` alone names one); table
    // rows are synopses with placeholders and alternatives, not commands.
    for line in text.lines().filter(|l| !l.starts_with('|')) {
        for (i, span) in line.split('`').enumerate() {
            if i % 2 == 1 && span.contains(" --") {
                candidates.push(span.to_string());
            }
        }
    }
    let mut out = Vec::new();
    for line in candidates {
        let line = line.split(" #").next().unwrap_or("");
        for part in line.split(['|', ';', '&', '>']) {
            let words: Vec<&str> = part.split_whitespace().collect();
            let words = if words.first() == Some(&"sudo") { &words[1..] } else { &words[..] };
            if words.first() == Some(&"ser2mqtt") && words.len() > 1 {
                out.push(words.join(" "));
            }
        }
    }
    out
}

#[test]
fn every_ser2mqtt_command_in_the_docs_parses() {
    let mut parsed = 0;
    for (file, text) in pages() {
        for line in command_lines(&text) {
            let words: Vec<String> = line
                .split_whitespace()
                .map(|w| w.trim_matches(['[', ']', '\'', '"']).to_string())
                .filter(|w| !w.is_empty() && !w.ends_with("...") && *w != "…")
                .collect();
            if words.iter().any(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == ':' || c == '_')) {
                continue; // a synopsis with placeholders (`--config FILE`), not a command to type
            }
            if let Err(e) = Cli::try_parse_from(&words) {
                if !matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) {
                    panic!("{}: `{line}` does not parse:\n{e}", file.display());
                }
            }
            parsed += 1;
        }
    }
    assert!(parsed >= 5, "only {parsed} commands found");
}

/// The README's "Try a config without hardware" block, run by bash as written, from a directory laid
/// out like the repository (its `target/release/ser2mqtt` is the binary under test). It runs in a
/// network namespace of its own, where 127.0.0.1:1883 is free whatever this machine runs.
#[test]
fn the_readme_simulator_example_runs_as_written() {
    let (_, readme) = pages().remove(0);
    let block = blocks(&readme)
        .into_iter()
        .find(|(lang, _, before)| lang == "sh" && before.contains("tests/docs.rs runs this block"))
        .map(|(_, body, _)| body)
        .expect("the tested block is marked in README.md");
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("target/release")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ser2mqtt"), work.path().join("target/release/ser2mqtt")).unwrap();
    std::os::unix::fs::symlink(root().join("configs"), work.path().join("configs")).unwrap();
    std::fs::write(work.path().join("example.sh"), &block).unwrap();
    // Inside the namespace: loopback up, the example in its own process group, a subscriber that
    // retries until the broker listens, then the whole group ended.
    let script = r#"
        ip link set lo up || exit 90
        setsid bash example.sh > example.log 2>&1 &
        group=$!
        rc=1
        for _ in $(seq 1 60); do
            if out=$(mosquitto_sub -h 127.0.0.1 -t 'sensors/garden-pi/air/pm2_5' -C 1 -W 20 -v 2>/dev/null); then
                echo "$out"; rc=0; break
            fi
            sleep 0.5
        done
        kill -TERM -- -"$group" 2>/dev/null
        wait
        exit $rc
    "#;
    // As root, a network namespace of its own; otherwise in a user namespace where allowed, or through
    // sudo (as `.ci/run` does for what needs root) where it is not.
    let userns = Command::new("unshare").args(["-r", "-n", "true"]).status().is_ok_and(|s| s.success());
    let prefix: &[&str] = if nix::unistd::Uid::effective().is_root() {
        &["unshare", "-n"]
    } else if userns {
        &["unshare", "-r", "-n"]
    } else {
        &["sudo", "-n", "unshare", "-n"]
    };
    let out = Command::new(prefix[0])
        .args(&prefix[1..])
        .args(["bash", "-c", script])
        .current_dir(work.path())
        .output()
        .expect("unshare (util-linux)");
    let log = std::fs::read_to_string(work.path().join("example.log")).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "no reading arrived.\nstdout: {stdout}\nexample's output:\n{log}");
    let value: f64 = stdout.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(-1.0);
    assert!(stdout.starts_with("sensors/garden-pi/air/pm2_5 ") && value >= 0.0, "{stdout}");
}
