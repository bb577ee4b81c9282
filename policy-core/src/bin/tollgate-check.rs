//! Checks a tollgate policy file the way the filter will, before it reaches Envoy.
//!
//! `tollgate-check policy.json` exits 0 and prints a summary when the policy is valid, and exits 1
//! with `path: reason` on stderr when it is not. `-` reads standard input.

use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file] = args.as_slice() else {
        eprintln!("usage: tollgate-check <policy.json | ->");
        return ExitCode::from(2);
    };
    let mut text = Vec::new();
    let read = if file == "-" {
        std::io::stdin().read_to_end(&mut text).map(|_| ())
    } else {
        std::fs::read(file).map(|t| text = t)
    };
    if let Err(e) = read {
        eprintln!("{file}: cannot read: {e}");
        return ExitCode::from(2);
    }
    match policy_core::config::check_report(file, &text) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}
