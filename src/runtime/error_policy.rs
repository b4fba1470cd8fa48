//! The one place that turns an error's kind into what the runtime does about it. Loops ask
//! [`action`] and act; none of them looks at an error's text.

use crate::error::{Error, ErrorKind};

/// What a loop does after an operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A dependency hiccup: keep the work, wait (`retry::Retry` says how long) and try again.
    Retry,
    /// One record cannot be derived or written: it becomes a dead letter and the rest goes on.
    DeadLetter,
    /// This process lost ownership of the slot: stop writing at once and stand by.
    StandBy,
    /// Deriver must not go on (configuration, a source state it must not paper over): stop loudly.
    Stop,
}

/// The action for a failed batch, stream or command step.
pub fn action(e: &Error) -> Action {
    match e.kind {
        ErrorKind::Transient => Action::Retry,
        ErrorKind::Record => Action::DeadLetter,
        ErrorKind::Fenced => Action::StandBy,
        ErrorKind::Config | ErrorKind::Fatal => Action::Stop,
    }
}

/// Whether a worker keeps its batch and tries it again.
pub fn retries(e: &Error) -> bool {
    action(e) == Action::Retry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Cause;

    #[test]
    fn every_kind_has_one_action_and_text_does_not_matter() {
        assert_eq!(action(&Error::transient("connection reset")), Action::Retry);
        assert_eq!(action(&Error::record("value too large")), Action::DeadLetter);
        assert_eq!(action(&Error::new(ErrorKind::Fenced, "lost the lock")), Action::StandBy);
        assert_eq!(action(&Error::config("bad pipeline")), Action::Stop);
        assert_eq!(action(&Error::fatal("slot lost")), Action::Stop);
        // A message that reads like another kind changes nothing; neither does the cause.
        assert_eq!(action(&Error::fatal("connection reset, retrying")), Action::Stop);
        assert_eq!(action(&Error::transient("x").with_cause(Cause::Postgres { sqlstate: "08006".into() })), Action::Retry);
        assert!(retries(&Error::transient("x")));
        assert!(!retries(&Error::fatal("x")));
    }
}
