//! Bounds-checked access to guest memory, and the allocate-copy-publish dance that returns data to
//! the guest.
//!
//! Every pointer the guest hands us is untrusted: a `(ptr, len)` that leaves linear memory turns into
//! [`Status::InvalidMemoryAccess`], never a host panic, so a buggy filter fails the way it would in
//! Envoy. Only a trap inside the guest allocator is propagated as an error (it is the guest's trap).

use wasmtime::{Caller, Extern, Memory};

use crate::abi::Status;
use crate::state::HostState;

/// The caller type every import receives.
pub(crate) type Ctx<'a> = Caller<'a, HostState>;

fn memory(caller: &mut Ctx<'_>) -> Result<Memory, Status> {
    caller
        .get_export("memory")
        .and_then(Extern::into_memory)
        .ok_or(Status::InvalidMemoryAccess)
}

/// Guest integers are `u32` on wasm32 whatever their wasm type says.
pub(crate) fn to_usize(value: i32) -> usize {
    value as u32 as usize
}

fn range(ptr: i32, len: usize) -> Result<core::ops::Range<usize>, Status> {
    let start = to_usize(ptr);
    let end = start.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    Ok(start..end)
}

/// Copies `len` bytes at `ptr` out of guest memory.
pub(crate) fn read(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let memory = memory(caller)?;
    let range = range(ptr, to_usize(len))?;
    memory
        .data(&*caller)
        .get(range)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

/// Copies `bytes` into guest memory at `ptr`.
pub(crate) fn write(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let memory = memory(caller)?;
    let range = range(ptr, bytes.len())?;
    memory
        .data_mut(&mut *caller)
        .get_mut(range)
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

/// Writes a little-endian `u32` (a wasm32 pointer or size) at `ptr`.
pub(crate) fn write_u32(caller: &mut Ctx<'_>, ptr: i32, value: u32) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Writes a little-endian `u64` at `ptr`.
pub(crate) fn write_u64(caller: &mut Ctx<'_>, ptr: i32, value: u64) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Whether `len` bytes at `ptr` lie inside guest memory.
pub(crate) fn check(caller: &mut Ctx<'_>, ptr: i32, len: usize) -> Result<(), Status> {
    let memory = memory(caller)?;
    let range = range(ptr, len)?;
    if range.end <= memory.data_size(&*caller) {
        Ok(())
    } else {
        Err(Status::InvalidMemoryAccess)
    }
}

/// Asks the guest for `size` bytes through `proxy_on_memory_allocate` (preferred by the spec) or
/// `malloc` (what the Rust SDK exports on wasm32-unknown-unknown). `Ok(None)` when the guest has no
/// usable allocator or returned null; `Err` only when the allocator trapped.
fn allocate(caller: &mut Ctx<'_>, size: u32) -> wasmtime::Result<Option<i32>> {
    let Some(func) = caller
        .get_export("proxy_on_memory_allocate")
        .or_else(|| caller.get_export("malloc"))
        .and_then(Extern::into_func)
    else {
        return Ok(None);
    };
    let Ok(typed) = func.typed::<i32, i32>(&*caller) else {
        return Ok(None);
    };
    let ptr = typed.call(&mut *caller, size as i32)?;
    Ok((ptr != 0).then_some(ptr))
}

/// Why a host function did not return `Ok`: a status for the guest, or a trap inside a guest call
/// the host made (the allocator), which must unwind the guest.
#[derive(Debug)]
pub(crate) enum CallError {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for CallError {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

impl From<wasmtime::Error> for CallError {
    fn from(error: wasmtime::Error) -> Self {
        Self::Trap(error)
    }
}

/// Hands `bytes` to the guest the way Envoy does (`copyToPointerSize`): allocate exactly
/// `bytes.len()` in the guest (the SDK adopts the block with `Vec::from_raw_parts(p, n, n)`), copy,
/// then publish pointer and size at the two out-pointers. Empty data is published as `(0, 0)`
/// without an allocation, which the SDK reads as "no data". The out-pointers are checked first so a
/// bad pointer does not leak a guest allocation.
pub(crate) fn return_bytes(
    caller: &mut Ctx<'_>,
    bytes: &[u8],
    ret_ptr: i32,
    ret_len: i32,
) -> Result<(), CallError> {
    check(caller, ret_ptr, 4)?;
    check(caller, ret_len, 4)?;
    let len = u32::try_from(bytes.len()).map_err(|_| Status::InternalFailure)?;
    let addr = if bytes.is_empty() {
        0
    } else {
        let addr = allocate(caller, len)?.ok_or(Status::InvalidMemoryAccess)?;
        write(caller, addr, bytes)?;
        addr
    };
    write_u32(caller, ret_ptr, addr as u32)?;
    write_u32(caller, ret_len, len)?;
    Ok(())
}
