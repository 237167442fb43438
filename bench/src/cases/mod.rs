//! The benchmark cases, one module per area of the library.

use crate::harness::Case;

mod aio;
mod cluster;
mod ipc;
mod large;
mod lifecycle;
mod manager;
mod pool;
pub mod start_methods;
mod sync;

/// Every case, in the order they run.
pub fn all() -> Vec<Case> {
    let mut cases = Vec::new();
    cases.extend(lifecycle::cases());
    cases.extend(start_methods::cases());
    cases.extend(sync::cases());
    cases.extend(ipc::cases());
    cases.extend(large::cases());
    cases.extend(pool::cases());
    cases.extend(manager::cases());
    cases.extend(cluster::cases());
    cases.extend(aio::cases());
    cases
}
