//! The messages between rank 0 and a serving rank: one MPI tag, the kind in the first byte,
//! fixed fields little-endian. Open MPI keeps messages between two ranks on one tag in order,
//! which the relay relies on: a worker's last replies reach rank 0 before its death does.
//!
//! | kind | direction | body |
//! |---|---|---|
//! | hello | server to 0 | build hash (32 bytes), pid `u32`, host name |
//! | verdict | 0 to server | `1u8` welcome, or `0u8` and why not |
//! | launch | 0 to server | slot `u64`, the pool's `WorkerStart` bytes |
//! | launched | server to 0 | slot `u64`, the worker's pid `u32` |
//! | launch failed | server to 0 | slot `u64`, why |
//! | to worker | 0 to server | slot `u64`, bytes of the pool's frames |
//! | from worker | server to 0 | slot `u64`, bytes of the worker's frames |
//! | died | server to 0 | slot `u64`, exit code `i32` (`-N` for signal N) |
//! | kill | 0 to server | slot `u64` |
//! | shutdown | 0 to server | (nothing) |
//! | alive | both ways | (nothing): a heartbeat, `net::HEARTBEAT` apart |

/// The one tag every message uses, so that messages between two ranks stay in order.
pub(crate) const TAG: i32 = 0x6d70;

/// A message between rank 0 and a server.
#[derive(Debug, PartialEq)]
pub(crate) enum Msg {
    Hello {
        hash: [u8; 32],
        pid: u32,
        host: String,
    },
    Verdict(Result<(), String>),
    Launch {
        slot: u64,
        start: Vec<u8>,
    },
    Launched {
        slot: u64,
        pid: u32,
    },
    LaunchFailed {
        slot: u64,
        why: String,
    },
    ToWorker {
        slot: u64,
        bytes: Vec<u8>,
    },
    FromWorker {
        slot: u64,
        bytes: Vec<u8>,
    },
    Died {
        slot: u64,
        code: i32,
    },
    Kill {
        slot: u64,
    },
    Shutdown,
    Alive,
}

const HELLO: u8 = 1;
const VERDICT: u8 = 2;
const LAUNCH: u8 = 3;
const LAUNCHED: u8 = 4;
const LAUNCH_FAILED: u8 = 5;
const TO_WORKER: u8 = 6;
const FROM_WORKER: u8 = 7;
const DIED: u8 = 8;
const KILL: u8 = 9;
const SHUTDOWN: u8 = 10;
const ALIVE: u8 = 11;

/// Appends a "to worker" or "from worker" message for `slot` with `bytes`, without an
/// intermediate copy (the common message).
pub(crate) fn encode_relay(out: &mut Vec<u8>, to_worker: bool, slot: u64, bytes: &[u8]) {
    out.reserve(9 + bytes.len());
    out.push(if to_worker { TO_WORKER } else { FROM_WORKER });
    out.extend_from_slice(&slot.to_le_bytes());
    out.extend_from_slice(bytes);
}

impl Msg {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let slot_msg = |out: &mut Vec<u8>, kind: u8, slot: u64| {
            out.push(kind);
            out.extend_from_slice(&slot.to_le_bytes());
        };
        match self {
            Msg::Hello { hash, pid, host } => {
                out.push(HELLO);
                out.extend_from_slice(hash);
                out.extend_from_slice(&pid.to_le_bytes());
                out.extend_from_slice(host.as_bytes());
            }
            Msg::Verdict(v) => {
                out.push(VERDICT);
                match v {
                    Ok(()) => out.push(1),
                    Err(why) => {
                        out.push(0);
                        out.extend_from_slice(why.as_bytes());
                    }
                }
            }
            Msg::Launch { slot, start } => {
                slot_msg(&mut out, LAUNCH, *slot);
                out.extend_from_slice(start);
            }
            Msg::Launched { slot, pid } => {
                slot_msg(&mut out, LAUNCHED, *slot);
                out.extend_from_slice(&pid.to_le_bytes());
            }
            Msg::LaunchFailed { slot, why } => {
                slot_msg(&mut out, LAUNCH_FAILED, *slot);
                out.extend_from_slice(why.as_bytes());
            }
            Msg::ToWorker { slot, bytes } => encode_relay(&mut out, true, *slot, bytes),
            Msg::FromWorker { slot, bytes } => encode_relay(&mut out, false, *slot, bytes),
            Msg::Died { slot, code } => {
                slot_msg(&mut out, DIED, *slot);
                out.extend_from_slice(&code.to_le_bytes());
            }
            Msg::Kill { slot } => slot_msg(&mut out, KILL, *slot),
            Msg::Shutdown => out.push(SHUTDOWN),
            Msg::Alive => out.push(ALIVE),
        }
        out
    }

    /// The message in `bytes`, or `None` for bytes that are not one (a peer running other
    /// code: the handshake refuses those before anything else is sent).
    pub(crate) fn decode(mut bytes: Vec<u8>) -> Option<Msg> {
        let kind = *bytes.first()?;
        let slot =
            || -> Option<u64> { Some(u64::from_le_bytes(bytes.get(1..9)?.try_into().ok()?)) };
        let text =
            |from: usize| String::from_utf8_lossy(bytes.get(from..).unwrap_or(&[])).into_owned();
        Some(match kind {
            HELLO => Msg::Hello {
                hash: bytes.get(1..33)?.try_into().ok()?,
                pid: u32::from_le_bytes(bytes.get(33..37)?.try_into().ok()?),
                host: text(37),
            },
            VERDICT => match *bytes.get(1)? {
                1 => Msg::Verdict(Ok(())),
                _ => Msg::Verdict(Err(text(2))),
            },
            LAUNCH => Msg::Launch {
                slot: slot()?,
                start: bytes.get(9..)?.to_vec(),
            },
            LAUNCHED => Msg::Launched {
                slot: slot()?,
                pid: u32::from_le_bytes(bytes.get(9..13)?.try_into().ok()?),
            },
            LAUNCH_FAILED => Msg::LaunchFailed {
                slot: slot()?,
                why: text(9),
            },
            TO_WORKER | FROM_WORKER => {
                let slot = slot()?;
                // The payload is most of the message: move it rather than copy it.
                bytes.drain(..9);
                if kind == TO_WORKER {
                    Msg::ToWorker { slot, bytes }
                } else {
                    Msg::FromWorker { slot, bytes }
                }
            }
            DIED => Msg::Died {
                slot: slot()?,
                code: i32::from_le_bytes(bytes.get(9..13)?.try_into().ok()?),
            },
            KILL => Msg::Kill { slot: slot()? },
            SHUTDOWN => Msg::Shutdown,
            ALIVE => Msg::Alive,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let all = vec![
            Msg::Hello {
                hash: [7; 32],
                pid: 42,
                host: "h1".into(),
            },
            Msg::Verdict(Ok(())),
            Msg::Verdict(Err("no".into())),
            Msg::Launch {
                slot: 3,
                start: vec![1, 2],
            },
            Msg::Launched { slot: 3, pid: 99 },
            Msg::LaunchFailed {
                slot: 4,
                why: "out of pids".into(),
            },
            Msg::ToWorker {
                slot: u64::MAX,
                bytes: vec![9; 100],
            },
            Msg::FromWorker {
                slot: 0,
                bytes: vec![],
            },
            Msg::Died { slot: 5, code: -11 },
            Msg::Kill { slot: 6 },
            Msg::Shutdown,
            Msg::Alive,
        ];
        for m in all {
            assert_eq!(Msg::decode(m.encode()), Some(m));
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(Msg::decode(vec![]), None);
        assert_eq!(Msg::decode(vec![200]), None);
        assert_eq!(Msg::decode(vec![HELLO, 1, 2]), None);
        assert_eq!(Msg::decode(vec![DIED, 1, 2, 3, 4, 5, 6, 7, 8, 1]), None);
        assert_eq!(Msg::decode(vec![TO_WORKER, 1]), None);
    }
}
