//! The first failure of queued work, kept until an op that returns a value to
//! the host hands it out.
//!
//! CUDA reports a failed kernel at the next synchronization, not at its launch,
//! so an op that only queues work cannot return the error that belongs to it.
//! The backend therefore records the first failure here (with the kernel and
//! shapes that caused it), queues nothing more while one is pending, and every
//! op that brings a value to the host (a download, a reduction, a loss) returns
//! it as its `Err`: no number computed after a failure reaches the host. The
//! error is handed out once, so after an out-of-memory error the next run starts
//! clean; a fault that breaks the context makes the driver fail again, and the
//! next run fails with its own message.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;

#[derive(Default)]
pub(super) struct PendingError {
    first: Mutex<Option<anyhow::Error>>,
    /// Whether `first` holds an error (read on every launch without the lock).
    set: AtomicBool,
}

impl PendingError {
    /// Keeps `error` unless an earlier one is pending (later ones are its consequences).
    pub(super) fn record(&self, error: anyhow::Error) {
        let mut first = self.first.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if first.is_none() {
            *first = Some(error);
            self.set.store(true, Ordering::Release);
        }
    }

    /// Whether an error is pending (queueing more work is then pointless).
    pub(super) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// The pending error, if any, which is cleared.
    pub(super) fn take(&self) -> Result<()> {
        if !self.is_set() {
            return Ok(());
        }
        let mut first = self.first.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.set.store(false, Ordering::Release);
        first.take().map_or(Ok(()), Err)
    }

    /// `value`, or `None` with its error recorded.
    pub(super) fn keep<T>(&self, value: Result<T>) -> Option<T> {
        value.map_err(|e| self.record(e)).ok()
    }
}

#[cfg(test)]
mod tests {
    use anyhow::anyhow;

    use super::*;

    #[test]
    fn the_first_error_is_kept_and_handed_out_once() {
        let pending = PendingError::default();
        assert!(pending.take().is_ok() && !pending.is_set());
        pending.record(anyhow!("kernel fill failed"));
        pending.record(anyhow!("a consequence"));
        assert!(pending.is_set());
        assert_eq!(pending.take().unwrap_err().to_string(), "kernel fill failed");
        assert!(pending.take().is_ok() && !pending.is_set(), "handed out once");
        assert_eq!(pending.keep(Ok(3)), Some(3));
        assert_eq!(pending.keep::<i32>(Err(anyhow!("out of memory"))), None);
        assert_eq!(pending.take().unwrap_err().to_string(), "out of memory");
    }
}
