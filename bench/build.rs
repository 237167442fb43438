//! Builds the kernel-limit probe (`limits/limits.c`) with the system C compiler.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("limits");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&cc)
        .args(["-O2", "-o"])
        .arg(&out)
        .arg("limits/limits.c")
        .status()
        .unwrap_or_else(|e| panic!("could not run {cc} to build the limits probe: {e}"));
    assert!(status.success(), "{cc} failed to build limits/limits.c");
    println!("cargo:rustc-env=MULTIPROC_LIMITS_PROBE={}", out.display());
    println!("cargo:rerun-if-changed=limits/limits.c");
}
