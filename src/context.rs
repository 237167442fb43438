//! Start methods: how a child process begins.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind};

/// How a child process begins, as Python's start methods.
///
/// | method | the child is | targets it runs |
/// |---|---|---|
/// | `Fork` | a copy of the parent made by `fork()`: fastest, but unsafe in a parent that already runs threads (a lock another thread held stays locked in the child) | any closure |
///
/// # Examples
/// ```
/// use multiproc::StartMethod;
/// assert_eq!("fork".parse::<StartMethod>()?, StartMethod::Fork);
/// assert_eq!(StartMethod::Fork.to_string(), "fork");
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StartMethod {
    /// The child is a `fork()` of the parent.
    Fork,
}

impl StartMethod {
    /// Python's name for the method.
    pub fn name(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
        }
    }
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StartMethod {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "fork" => Ok(StartMethod::Fork),
            other => Err(Error::with_message(
                ErrorKind::UnsupportedStartMethod,
                format!("unknown start method {other:?}"),
            )),
        }
    }
}

/// The start methods this platform supports, the default first.
///
/// # Examples
/// ```
/// assert!(multiproc::get_all_start_methods().contains(&multiproc::StartMethod::Fork));
/// ```
pub fn get_all_start_methods() -> Vec<StartMethod> {
    vec![StartMethod::Fork]
}

/// The start method used when a process does not choose one.
///
/// # Examples
/// ```
/// assert_eq!(multiproc::get_start_method(), multiproc::StartMethod::Fork);
/// ```
pub fn get_start_method() -> StartMethod {
    StartMethod::Fork
}
