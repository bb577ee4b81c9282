//! The filter only needs what the host (and Envoy) provides.

use std::collections::BTreeSet;

use host_tests::IMPLEMENTED_IMPORTS;

use crate::support::tollgate;

#[test]
fn every_import_of_the_filter_is_implemented_by_the_host() {
    let implemented: BTreeSet<&str> = IMPLEMENTED_IMPORTS.iter().copied().collect();
    let missing: Vec<String> = tollgate()
        .imports()
        .into_iter()
        .filter(|(module, name)| module != "env" || !implemented.contains(name.as_str()))
        .map(|(module, name)| format!("{module}.{name}"))
        .collect();
    assert!(missing.is_empty(), "imports the host lacks: {missing:?}");
}

#[test]
fn the_filter_exports_the_abi_marker_and_an_allocator() {
    let exports = tollgate().exports();
    assert!(
        exports.iter().any(|e| e == "proxy_abi_version_0_2_1"),
        "{exports:?}"
    );
    assert!(
        exports
            .iter()
            .any(|e| e == "malloc" || e == "proxy_on_memory_allocate"),
        "{exports:?}"
    );
}
