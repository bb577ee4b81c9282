//! `tollgate check`: the same check, output and exit codes as policy-core's `tollgate-check`.

use std::io::Read;
use std::process::ExitCode;

use policy_core::Policy;

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
    match Policy::from_json(&text) {
        Ok(policy) => {
            let (keys, bytes) = policy.footprint();
            println!(
                "{file}: valid: {} tiers; at most {keys} shared-data keys, {bytes} bytes of values",
                policy.tiers().len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{file}: {e}");
            ExitCode::FAILURE
        }
    }
}
