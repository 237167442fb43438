//! Selects the portable POSIX platform layer (`src/sys/posix/`, issue 18) on Linux when the
//! environment variable `MULTIPROC_PORTABLE` is `1`, as `RUSTFLAGS="--cfg multiproc_portable"`
//! does. Why a second switch: `RUSTFLAGS` changes every crate's fingerprint, so it rebuilds
//! every dependency into a separate tree; this cfg reaches only this package (its library,
//! tests and examples), so switching layers rebuilds multiproc alone.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=MULTIPROC_PORTABLE");
    println!("cargo::rustc-check-cfg=cfg(multiproc_portable)");
    if std::env::var_os("MULTIPROC_PORTABLE").is_some_and(|v| v == "1") {
        println!("cargo::rustc-cfg=multiproc_portable");
    }
}
