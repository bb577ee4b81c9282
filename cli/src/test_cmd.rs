//! `tollgate test POLICY TESTS…`: runs YAML test files against the compiled filter and reports
//! like `cargo test`: one line per case, a diff per failure, `N passed, N failed`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::module::Module;
use crate::run::{self, CaseResult};
use crate::spec;

/// The simulated workers a case runs on unless its file says otherwise.
pub const DEFAULT_WORKERS: usize = 4;

/// One file's results, for the summary and JUnit.
struct FileResults {
    path: String,
    cases: Vec<CaseResult>,
}

/// Runs the test files. Exit 0 when every case passed, 1 when one failed, 2 when a file or the
/// policy is unusable (nothing is run then).
pub fn run(module: &Module, policy_path: &str, tests: &[String], junit: Option<&str>) -> ExitCode {
    let policy: Value = match std::fs::read(policy_path)
        .map_err(|e| format!("cannot read: {e}"))
        .and_then(|t| {
            policy_core::Policy::from_json(&t).map_err(|e| e.to_string())?;
            serde_json::from_slice(&t).map_err(|e| e.to_string())
        }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{policy_path}: {e}");
            return ExitCode::from(2);
        }
    };
    // Parse and validate every file before running anything.
    let mut loaded = Vec::new();
    for path in tests {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{path}: cannot read: {e}");
                return ExitCode::from(2);
            }
        };
        let dir = Path::new(path).parent().unwrap_or(Path::new("."));
        let checked = spec::parse(&text).and_then(|file| {
            let plans = spec::plan(&file, &policy, dir)?;
            Ok((file, plans))
        });
        match checked {
            Ok((file, plans)) => loaded.push((path, file, plans)),
            Err(e) => {
                eprintln!("{path}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    println!(
        "tollgate test: module {} (sha256 {})",
        module.path.display(),
        module.sha256
    );
    println!("policy {policy_path}");
    let mut results = Vec::new();
    for (path, file, plans) in &loaded {
        println!();
        println!("running {} cases from {path}", file.cases.len());
        let mut cases = Vec::new();
        for (case, policies) in file.cases.iter().zip(plans) {
            let workers = case.workers.or(file.workers).unwrap_or(DEFAULT_WORKERS);
            let r = run::case(&module.plugin, workers, case, policies);
            println!(
                "case {} ... {}",
                r.name,
                if r.failures.is_empty() {
                    "ok"
                } else {
                    "FAILED"
                }
            );
            cases.push(r);
        }
        results.push(FileResults {
            path: (*path).clone(),
            cases,
        });
    }
    let failed: Vec<(&str, &CaseResult)> = results
        .iter()
        .flat_map(|f| f.cases.iter().map(move |c| (f.path.as_str(), c)))
        .filter(|(_, c)| !c.failures.is_empty())
        .collect();
    let total: usize = results.iter().map(|f| f.cases.len()).sum();
    if !failed.is_empty() {
        println!("\nfailures:");
        for (path, case) in &failed {
            println!("\n---- {path}: {} ----", case.name);
            for f in &case.failures {
                println!("{f}");
            }
        }
        println!("\nfailed cases:");
        for (path, case) in &failed {
            println!("    {path}: {}", case.name);
        }
    }
    println!();
    println!("{} passed, {} failed", total - failed.len(), failed.len());
    if let Some(out) = junit {
        if let Err(e) = std::fs::write(out, junit_xml(&results)) {
            eprintln!("{out}: cannot write the JUnit report: {e}");
            return ExitCode::from(2);
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn junit_xml(files: &[FileResults]) -> String {
    let total: usize = files.iter().map(|f| f.cases.len()).sum();
    let failures: usize = files
        .iter()
        .flat_map(|f| &f.cases)
        .filter(|c| !c.failures.is_empty())
        .count();
    let secs = |d: Duration| format!("{:.3}", d.as_secs_f64());
    let all: Duration = files.iter().flat_map(|f| &f.cases).map(|c| c.elapsed).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"tollgate test\" tests=\"{total}\" failures=\"{failures}\" time=\"{}\">",
        secs(all)
    );
    for f in files {
        let n = f.cases.len();
        let failed = f.cases.iter().filter(|c| !c.failures.is_empty()).count();
        let time: Duration = f.cases.iter().map(|c| c.elapsed).sum();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{n}\" failures=\"{failed}\" errors=\"0\" time=\"{}\">",
            xml(&f.path),
            secs(time)
        );
        for c in &f.cases {
            let _ = write!(
                out,
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{}\"",
                xml(&f.path),
                xml(&c.name),
                secs(c.elapsed)
            );
            if c.failures.is_empty() {
                out.push_str("/>\n");
            } else {
                let text = c.failures.join("\n");
                let first = text.lines().next().unwrap_or("").trim();
                let _ = writeln!(
                    out,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    xml(first),
                    xml(&text)
                );
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}
