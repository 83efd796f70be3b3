//! The broken-config corpus in `tests/broken_configs/`: every file is rejected, and every problem in
//! it is reported at the right line and column, with its key path and a message saying what is valid.
//! Each file states what it expects in `# expect: LINE:COL: PATH: MESSAGE…` comment lines.

use std::path::Path;

use ser2mqtt::config::{self, LoadError};

#[test]
fn every_broken_config_reports_each_problem_where_it_is() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken_configs");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus has {} files", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expects: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# expect: ")).collect();
        assert!(!expects.is_empty(), "{} has no `# expect:` line", file.display());
        let errors = match config::load(file) {
            Ok(_) => {
                failures.push(format!("{}: accepted", file.display()));
                continue;
            }
            Err(LoadError::Invalid(e)) => e,
            Err(e) => panic!("{e}"),
        };
        let rendered = errors.to_string();
        let prefix = format!("{}:", file.display());
        let problems: Vec<&str> = rendered.lines().skip(1).map(|l| l.strip_prefix(&prefix).unwrap_or(l)).collect();
        for want in &expects {
            if !problems.iter().any(|p| p.starts_with(want)) {
                failures.push(format!("{}: expected `{want}`, got:\n  {}", file.display(), problems.join("\n  ")));
            }
        }
        if problems.len() != expects.len() {
            failures.push(format!(
                "{}: {} problems reported, {} expected:\n  {}",
                file.display(),
                problems.len(),
                expects.len(),
                problems.join("\n  ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn a_missing_file_is_an_error_naming_the_path() {
    let err = config::load(Path::new("/nonexistent/ser2mqtt.yaml")).unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }));
    assert!(
        err.to_string().starts_with("cannot read config file /nonexistent/ser2mqtt.yaml: No such file or directory"),
        "{err}"
    );
}
