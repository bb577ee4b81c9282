//! `tollgate check`: the same check, output and exit codes as policy-core's `tollgate-check`.

use std::io::Read;
use std::process::ExitCode;

/// Checks `file` (`-` for standard input): 0 and a summary when valid, 1 and `file: path: reason`
/// on stderr when not, 2 when it cannot be read.
pub fn run(file: &str) -> ExitCode {
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
