//! Which code offsets a manager's server may call: the functions of this binary that are
//! `modify`'s entries or `#[multiproc::remote]`'s constructors and dispatchers, found by name in
//! the executable's ELF symbol table.
//!
//! A manager client sends functions as offsets from an anchor (`super::image`). Checking that
//! an offset lies in the program's text is not enough against a client that holds the authkey
//! but lies: it could name any function, or the middle of one. So the server calls an offset
//! only if the symbol table has a function of the expected kind starting exactly there: the
//! compiler itself built the table, with one entry per function the program can send. The
//! names are Rust's legacy mangling (the default): `modify`'s entry is
//! `multiproc::manager::modify::entry` (every instance has the same signature, whatever its
//! generic parameters, which legacy names omit), and the macro's functions end in
//! `__<Trait>_remote_ctor` / `__<Trait>_remote_dispatch`. Closures nested in those functions
//! have a further path component, so they never match. A stripped executable has no symbol
//! table: then nothing is callable, and the client is told why.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

/// The kinds of function a client may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// `multiproc::manager::modify::entry::<..>`.
    Modify,
    /// A `#[multiproc::remote]` constructor.
    Ctor,
    /// A `#[multiproc::remote]` dispatch function.
    Dispatch,
}

#[derive(Debug, Default)]
struct Table {
    modify: HashSet<i64>,
    ctor: HashSet<i64>,
    dispatch: HashSet<i64>,
}

/// Whether `offset` (from `entry_offset`) is the start of a function of kind `kind` in this
/// executable. `Err` says why no offset can be checked (no symbol table, unreadable file).
pub(crate) fn is_entry(kind: EntryKind, offset: i64) -> Result<bool, String> {
    static TABLE: OnceLock<Result<Table, String>> = OnceLock::new();
    let table = TABLE
        .get_or_init(|| read_table(&exe_path()?))
        .as_ref()
        .map_err(Clone::clone)?;
    Ok(match kind {
        EntryKind::Modify => &table.modify,
        EntryKind::Ctor => &table.ctor,
        EntryKind::Dispatch => &table.dispatch,
    }
    .contains(&offset))
}

/// The running executable's file: `/proc/self/exe` on the Linux layer (the running file even
/// if its path was replaced since); on the portable layer, which this file also serves, the
/// path the program was started from (`current_exe`). Only ELF is read: on macOS (Mach-O)
/// the table cannot be read and every call is refused, saying why.
fn exe_path() -> Result<std::path::PathBuf, String> {
    if cfg!(all(target_os = "linux", not(multiproc_portable))) {
        return Ok("/proc/self/exe".into());
    }
    std::env::current_exe().map_err(|e| format!("cannot find the running executable: {e}"))
}

fn read_table(file_path: &std::path::Path) -> Result<Table, String> {
    let path = file_path.display();
    let file = File::open(file_path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let symbols = function_symbols(&file).map_err(|e| format!("{path}: {e}"))?;
    let mut anchor = None;
    let mut table = Table::default();
    let mut found = Vec::new();
    for (name, value) in symbols {
        let Some(path) = legacy_path(&name) else {
            continue;
        };
        let last = path.last().copied().unwrap_or_default();
        if let ["multiproc", "sys", "linux" | "posix", "image", "anchor"] = path[..] {
            anchor = Some(value);
        } else if path == ["multiproc", "manager", "modify", "entry"] {
            found.push((EntryKind::Modify, value));
        } else if last.starts_with("__") && last.ends_with("_remote_ctor") {
            found.push((EntryKind::Ctor, value));
        } else if last.starts_with("__") && last.ends_with("_remote_dispatch") {
            found.push((EntryKind::Dispatch, value));
        }
    }
    let anchor = anchor.ok_or_else(|| {
        "the executable has no symbol table (stripped?): the manager cannot check the \
         functions clients name, so it calls none (build without `strip`)"
            .to_string()
    })?;
    for (kind, value) in found {
        let offset = value.wrapping_sub(anchor) as i64;
        match kind {
            EntryKind::Modify => table.modify.insert(offset),
            EntryKind::Ctor => table.ctor.insert(offset),
            EntryKind::Dispatch => table.dispatch.insert(offset),
        };
    }
    Ok(table)
}

/// The path of a legacy-mangled Rust symbol (`_ZN<len><ident>...17h<16 hex>E`), without its
/// hash; `None` for anything else.
fn legacy_path(name: &str) -> Option<Vec<&str>> {
    let mut rest = name.strip_prefix("_ZN")?.strip_suffix('E')?;
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let len: usize = rest[..digits].parse().ok()?;
        let part = rest.get(digits..digits + len)?;
        rest = &rest[digits + len..];
        parts.push(part);
    }
    let hash = parts.pop()?;
    let hex = hash.strip_prefix('h')?;
    (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(parts)
}

/// `(name, value)` of every function symbol in the ELF64 file's `.symtab`.
fn function_symbols(file: &File) -> Result<Vec<(String, u64)>, String> {
    let read = |offset: u64, len: usize| -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| format!("reading {len} bytes at {offset}: {e}"))?;
        Ok(buf)
    };
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
    let header = read(0, 64)?;
    // 64-bit, little-endian ELF: the only kind this crate builds for on Linux today.
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let (shoff, shentsize, shnum) = (
        u64_at(&header, 0x28),
        usize::from(u16_at(&header, 0x3a)),
        usize::from(u16_at(&header, 0x3c)),
    );
    if shentsize < 64 || shnum == 0 {
        return Err("no section headers".into());
    }
    let sections = read(shoff, shentsize * shnum)?;
    let section = |i: usize| &sections[i * shentsize..i * shentsize + 64];
    const SHT_SYMTAB: u32 = 2;
    let Some(symtab) = (0..shnum).map(section).find(|s| u32_at(s, 4) == SHT_SYMTAB) else {
        return Ok(Vec::new());
    };
    let strtab_index = u32_at(symtab, 0x28) as usize;
    if strtab_index >= shnum {
        return Err("the symbol table's string table is missing".into());
    }
    let strtab = section(strtab_index);
    let to_len = |n: u64| usize::try_from(n).map_err(|_| "a section too large".to_string());
    let syms = read(u64_at(symtab, 0x18), to_len(u64_at(symtab, 0x20))?)?;
    let strings = read(u64_at(strtab, 0x18), to_len(u64_at(strtab, 0x20))?)?;
    const STT_FUNC: u8 = 2;
    let mut out = Vec::new();
    for sym in syms.chunks_exact(24) {
        let (name, info, value) = (u32_at(sym, 0) as usize, sym[4], u64_at(sym, 8));
        if info & 0xf != STT_FUNC || value == 0 || name >= strings.len() {
            continue;
        }
        let end = strings[name..]
            .iter()
            .position(|&b| b == 0)
            .map_or(strings.len(), |p| name + p);
        if let Ok(s) = std::str::from_utf8(&strings[name..end]) {
            out.push((s.to_owned(), value));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_paths() {
        assert_eq!(
            legacy_path("_ZN9multiproc7manager6modify5entry17h0123456789abcdefE"),
            Some(vec!["multiproc", "manager", "modify", "entry"])
        );
        // A closure inside `entry` has another component.
        assert_eq!(
            legacy_path(
                "_ZN9multiproc7manager6modify5entry28_$u7b$$u7b$closure$u7d$$u7d$17h0123456789abcdefE"
            )
            .map(|p| p.len()),
            Some(5)
        );
        assert_eq!(
            legacy_path("_ZN9multiproc7manager6modify5entry17hnothexE"),
            None
        );
        assert_eq!(legacy_path("_ZN3foo99E"), None);
        assert_eq!(legacy_path("main"), None);
    }
}
