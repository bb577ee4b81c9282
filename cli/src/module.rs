//! Which compiled filter the CLI runs, and its checksum.
//!
//! The module is found at run time rather than embedded: a build script cannot cross-build
//! wasm32 inside the outer cargo without a second target directory and a nested build, and a
//! team that deploys a specific artifact wants to test exactly that file anyway. The search
//! order is `--wasm FILE`, `$TOLLGATE_WASM`, `tollgate.wasm` beside the executable, then this
//! workspace's `target/wasm32-unknown-unknown/release/tollgate.wasm` (what `scripts/build-wasm`
//! writes).

use std::fmt;
use std::path::{Path, PathBuf};

use host_tests::Plugin;
use sha2::{Digest, Sha256};

/// The module the CLI runs: where it came from, its sha256, and the compiled plugin.
#[derive(Debug)]
pub struct Module {
    /// The file it was read from.
    pub path: PathBuf,
    /// Lower-case hex sha256 of its bytes.
    pub sha256: String,
    /// The compiled module.
    pub plugin: Plugin,
}

/// Why no module could be loaded.
#[derive(Debug)]
pub enum ModuleError {
    /// No candidate file exists.
    NotFound(Vec<PathBuf>),
    /// The file exists but cannot be read.
    Read(PathBuf, std::io::Error),
    /// `--sha256` (or `FILE@sha256:…`) names another checksum.
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// `--sha256` is not 64 hex digits.
    BadChecksum(String),
    /// wasmtime refused it.
    Compile(PathBuf, String),
}

impl fmt::Display for ModuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound(tried) => {
                write!(f, "no tollgate.wasm found (tried ")?;
                for (i, p) in tried.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{}", p.display())?;
                }
                write!(
                    f,
                    "); build it with scripts/build-wasm or pass --wasm FILE"
                )
            }
            Self::Read(p, e) => write!(f, "{}: cannot read: {e}", p.display()),
            Self::Checksum {
                path,
                expected,
                actual,
            } => write!(
                f,
                "{}: sha256 is {actual}, not the expected {expected}: refusing to test another module than the one named",
                path.display()
            ),
            Self::BadChecksum(s) => write!(f, "--sha256 {s}: not 64 hexadecimal digits"),
            Self::Compile(p, e) => write!(f, "{}: not a loadable proxy-wasm module: {e}", p.display()),
        }
    }
}

impl std::error::Error for ModuleError {}

/// The files tried, in order, when no `--wasm` is given.
pub fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os(host_tests::plugin::TOLLGATE_WASM_ENV) {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push(dir.join("tollgate.wasm"));
    }
    out.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target/wasm32-unknown-unknown/release/tollgate.wasm"),
    );
    out
}

/// Splits `FILE@sha256:HEX` into the file and the checksum.
pub fn split_pinned(arg: &str) -> (&str, Option<&str>) {
    match arg.rsplit_once("@sha256:") {
        Some((file, hex)) => (file, Some(hex)),
        None => (arg, None),
    }
}

/// Finds, checks and compiles the module.
pub fn load(wasm: Option<&str>, sha256: Option<&str>) -> Result<Module, ModuleError> {
    let (explicit, pinned) = match wasm {
        Some(arg) => {
            let (file, pin) = split_pinned(arg);
            (Some(PathBuf::from(file)), pin)
        }
        None => (None, None),
    };
    let expected = match sha256.or(pinned) {
        Some(hex) => {
            let hex = hex.trim().to_ascii_lowercase();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ModuleError::BadChecksum(hex));
            }
            Some(hex)
        }
        None => None,
    };
    let path = match explicit {
        Some(p) => p,
        None => {
            let tried = candidates();
            match tried.iter().find(|p| p.is_file()) {
                Some(p) => std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()),
                None => return Err(ModuleError::NotFound(tried)),
            }
        }
    };
    let bytes = std::fs::read(&path).map_err(|e| ModuleError::Read(path.clone(), e))?;
    let sha256 = hex(&Sha256::digest(&bytes));
    if let Some(expected) = expected {
        if expected != sha256 {
            return Err(ModuleError::Checksum {
                path,
                expected,
                actual: sha256,
            });
        }
    }
    let plugin = Plugin::from_bytes(&bytes)
        .map_err(|e| ModuleError::Compile(path.clone(), e.to_string()))?;
    Ok(Module {
        path,
        sha256,
        plugin,
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
