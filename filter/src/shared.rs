//! [`policy_core::Store`] over proxy-wasm shared data.
//!
//! The SDK's wrappers panic on any status they do not expect, and a panic traps the VM and fails
//! every request on its worker. The limiter must instead degrade as configured
//! (`on_store_failure`), so the two shared-data calls are bound here directly and every status
//! maps to a [`StoreError`].
#![allow(unsafe_code)] // FFI to the two host functions; each call's safety is argued below.

use core::num::NonZeroU32;
use core::ptr::null_mut;

use policy_core::store::Versioned;
use policy_core::{Cas, Store, StoreError};

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
}

/// The vm_id's shared data, as seen by this worker's VM.
#[derive(Debug, Default)]
pub struct SharedData;

impl Store for SharedData {
    fn get(&mut self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let mut data: *mut u8 = null_mut();
        let mut size: usize = 0;
        let mut cas: u32 = 0;
        // SAFETY: the key pointer and length come from a live &str; the out-pointers are valid
        // locals. On Ok the host has allocated `size` bytes through this module's exported
        // allocator (as for every proxy-wasm return buffer) and hands ownership to us.
        let status = unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        match status {
            OK if data.is_null() => Ok(Some((Vec::new(), NonZeroU32::new(cas).map(Cas)))),
            OK => {
                // SAFETY: see above: `data` points to `size` initialised bytes we now own, allocated
                // with the global allocator that Vec uses.
                let value = unsafe { Vec::from_raw_parts(data, size, size) };
                Ok(Some((value, NonZeroU32::new(cas).map(Cas))))
            }
            NOT_FOUND => Ok(None),
            CAS_MISMATCH => Err(StoreError::CasMismatch),
            _ => Err(StoreError::Unavailable),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        let cas = cas.map_or(0, |c| c.0.get());
        // SAFETY: both pointers and lengths come from live slices that outlive the call; the
        // host copies the data.
        let status = unsafe {
            proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        };
        match status {
            OK => Ok(()),
            CAS_MISMATCH => Err(StoreError::CasMismatch),
            _ => Err(StoreError::Unavailable),
        }
    }
}
