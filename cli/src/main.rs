//! `tollgate`: check a policy, unit-test it against the compiled filter in wasmtime, and replay
//! traffic through it.
//!
//! ```text
//! tollgate check POLICY
//! tollgate test [--wasm FILE[@sha256:HEX]] [--sha256 HEX] [--junit FILE] POLICY TESTS.yaml…
//! tollgate simulate [--wasm …] [--workers K] [--json] [--chart FILE.svg] [--top N] POLICY TRACE
//! tollgate simulate --generate N --callers K [--seconds S] > TRACE.jsonl
//! ```
//!
//! Exit codes: 0 success, 1 a check or a test failed, 2 unusable input (bad arguments, an
//! unreadable or malformed file, a test referring to what the policy lacks, a module whose
//! checksum differs).

mod check;
mod llm;
mod module;
mod run;
mod simulate;
mod spec;
mod test_cmd;

use std::process::ExitCode;

const USAGE: &str = "\
usage:
  tollgate check POLICY|-
  tollgate test [--wasm FILE[@sha256:HEX]] [--sha256 HEX] [--junit FILE] POLICY TESTS.yaml...
  tollgate simulate [--wasm ...] [--workers K] [--json] [--chart FILE.svg] [--top N] POLICY TRACE
  tollgate simulate --generate N --callers K [--seconds S] > TRACE.jsonl

The module: --wasm FILE, else $TOLLGATE_WASM, else tollgate.wasm beside this executable, else
the workspace's target/wasm32-unknown-unknown/release/tollgate.wasm (scripts/build-wasm).";

/// Options shared by the subcommands that run the module, and the positional arguments.
#[derive(Debug, Default)]
struct Args {
    wasm: Option<String>,
    sha256: Option<String>,
    junit: Option<String>,
    workers: Option<String>,
    json: bool,
    chart: Option<String>,
    top: Option<String>,
    generate: Option<String>,
    callers: Option<String>,
    seconds: Option<String>,
    positional: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut out = Args::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--wasm" => out.wasm = Some(value("--wasm")?),
            "--sha256" => out.sha256 = Some(value("--sha256")?),
            "--junit" => out.junit = Some(value("--junit")?),
            "--workers" => out.workers = Some(value("--workers")?),
            "--json" => out.json = true,
            "--chart" => out.chart = Some(value("--chart")?),
            "--top" => out.top = Some(value("--top")?),
            "--generate" => out.generate = Some(value("--generate")?),
            "--callers" => out.callers = Some(value("--callers")?),
            "--seconds" => out.seconds = Some(value("--seconds")?),
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => out.positional.push(arg.clone()),
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = argv.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let args = match parse(rest) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tollgate {command}: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command.as_str() {
        "check" => match args.positional.as_slice() {
            [file] => check::run(file),
            _ => {
                eprintln!("usage: tollgate check <policy.json | ->");
                ExitCode::from(2)
            }
        },
        "test" => {
            let [policy, tests @ ..] = args.positional.as_slice() else {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            };
            if tests.is_empty() {
                eprintln!("tollgate test: no test files given\n{USAGE}");
                return ExitCode::from(2);
            }
            let module = match module::load(args.wasm.as_deref(), args.sha256.as_deref()) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("tollgate test: {e}");
                    return ExitCode::from(2);
                }
            };
            test_cmd::run(&module, policy, tests, args.junit.as_deref())
        }
        "simulate" => simulate(&args),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("tollgate: unknown command `{other}`\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn number<T: std::str::FromStr>(name: &str, value: Option<&str>, default: T) -> Result<T, String> {
    match value {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("{name} {v}: not a number")),
    }
}

fn simulate(args: &Args) -> ExitCode {
    let fail = |e: String| {
        eprintln!("tollgate simulate: {e}");
        ExitCode::from(2)
    };
    if args.generate.is_some() {
        let parsed = (|| {
            Ok::<_, String>((
                number("--generate", args.generate.as_deref(), 0u64)?,
                number("--callers", args.callers.as_deref(), 10_000u64)?,
                number("--seconds", args.seconds.as_deref(), 86_400f64)?,
            ))
        })();
        let (n, callers, seconds) = match parsed {
            Ok(p) => p,
            Err(e) => return fail(e),
        };
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        return match simulate::generate(n, callers, seconds, &mut out)
            .and_then(|()| std::io::Write::flush(&mut out))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format!("cannot write the trace: {e}")),
        };
    }
    let [policy, trace] = args.positional.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let opts = match (|| {
        Ok::<_, String>(simulate::Options {
            workers: number("--workers", args.workers.as_deref(), 1usize)?.max(1),
            json: args.json,
            chart: args.chart.clone(),
            top: number("--top", args.top.as_deref(), 10usize)?,
        })
    })() {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let module = match module::load(args.wasm.as_deref(), args.sha256.as_deref()) {
        Ok(m) => m,
        Err(e) => return fail(e.to_string()),
    };
    simulate::run(&module, policy, trace, &opts)
}
