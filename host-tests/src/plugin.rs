//! A compiled filter: engine, module and pre-linked imports, built once and instantiated per
//! simulated worker. Compiling tollgate takes a noticeable fraction of a second; instantiating is
//! cheap, so tests share one `Plugin` (e.g. through a `OnceLock`).

use std::fmt;
use std::path::{Path, PathBuf};

use wasmtime::{Config, Engine, InstancePre, Linker, Module};

use crate::error::HostError;
use crate::imports;
use crate::state::HostState;

/// Environment variable that overrides where [`Plugin::tollgate`] looks for the module.
pub const TOLLGATE_WASM_ENV: &str = "TOLLGATE_WASM";

/// A compiled, linked proxy-wasm module. Cloning is cheap and shares the compiled code.
#[derive(Clone)]
pub struct Plugin {
    engine: Engine,
    module: Module,
    pre: InstancePre<HostState>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.module.name())
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// Compiles a module from binary wasm or WAT text.
    pub fn from_bytes(bytes: impl AsRef<[u8]>) -> Result<Self, HostError> {
        let mut config = Config::new();
        // Fuel bounds every call; it is deterministic, unlike epoch deadlines.
        config.consume_fuel(true);
        let engine = Engine::new(&config).map_err(HostError::Load)?;
        let module = Module::new(&engine, bytes).map_err(HostError::Load)?;
        let mut linker = Linker::new(&engine);
        imports::link(&mut linker).map_err(HostError::Load)?;
        // A wasm32-wasip1 build also imports WASI; calling one traps with a clear message.
        linker
            .define_unknown_imports_as_traps(&module)
            .map_err(HostError::Load)?;
        let pre = linker.instantiate_pre(&module).map_err(HostError::Load)?;
        Ok(Self {
            engine,
            module,
            pre,
        })
    }

    /// Compiles the module at `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, HostError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => HostError::WasmMissing {
                path: path.to_owned(),
            },
            _ => HostError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
        Self::from_bytes(bytes)
    }

    /// Where tollgate's release build lives: `$TOLLGATE_WASM`, else
    /// `target/wasm32-unknown-unknown/release/tollgate.wasm` under the workspace root.
    pub fn tollgate_path() -> PathBuf {
        match std::env::var_os(TOLLGATE_WASM_ENV) {
            Some(path) => PathBuf::from(path),
            None => Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target/wasm32-unknown-unknown/release/tollgate.wasm"),
        }
    }

    /// Compiles tollgate from [`Plugin::tollgate_path`]. A missing file is
    /// [`HostError::WasmMissing`], whose message says to run `scripts/build-wasm`.
    pub fn tollgate() -> Result<Self, HostError> {
        Self::from_file(Self::tollgate_path())
    }

    /// The module's imports as `(module, name)`.
    pub fn imports(&self) -> Vec<(String, String)> {
        self.module
            .imports()
            .map(|import| (import.module().to_owned(), import.name().to_owned()))
            .collect()
    }

    /// The module's export names.
    pub fn exports(&self) -> Vec<String> {
        self.module
            .exports()
            .map(|export| export.name().to_owned())
            .collect()
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn instance_pre(&self) -> &InstancePre<HostState> {
        &self.pre
    }
}
