//! The time port on the real clock: `Utc::now`, tokio's timer, and jitter from the OS's random
//! source. `skewed` moves the clock (tests that let leases and deadlines pass without waiting).

use phoenix_core::model::Timestamp;
use phoenix_protocol::ports::Time;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Default)]
pub struct SystemTime {
    skew_secs: Option<Arc<AtomicI64>>,
}

impl SystemTime {
    pub fn new() -> Self {
        SystemTime::default()
    }

    /// The real clock plus `skew` seconds, read at every call.
    pub fn skewed(skew: Arc<AtomicI64>) -> Self {
        SystemTime {
            skew_secs: Some(skew),
        }
    }
}

impl Time for SystemTime {
    fn now(&self) -> Timestamp {
        let skew = self
            .skew_secs
            .as_ref()
            .map_or(0, |s| s.load(Ordering::SeqCst));
        chrono::Utc::now() + chrono::Duration::seconds(skew)
    }

    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    fn jitter(&self, n: u64) -> u64 {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let r = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default());
        r % n.max(1)
    }
}
