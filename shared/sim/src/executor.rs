//! The scheduler's tasks: one per handler invocation, each the controller's own future. The
//! simulator polls one task at a time, chosen by the seed; a task is runnable when it has been
//! woken (every port call wakes it at once; a sleep wakes it when the clock gets there). Dropping
//! a task is a crash, or Lambda's timeout: the future stops at the await where it is, with the
//! calls it made made and nothing after.

use crate::sim::Delivery;
use phoenix_core::model::Timestamp;
use phoenix_protocol::{Report, Result};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

pub type Handler = Pin<Box<dyn Future<Output = Result<Report>>>>;

struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

pub struct Task {
    /// The invocation's number.
    pub n: u64,
    pub delivery: Delivery,
    pub started: Timestamp,
    /// The Lambda context's deadline.
    pub deadline: Timestamp,
    handler: Handler,
    woken: Arc<Woken>,
}

impl Task {
    pub fn new(
        n: u64,
        delivery: Delivery,
        started: Timestamp,
        deadline: Timestamp,
        handler: Handler,
    ) -> Task {
        Task {
            n,
            delivery,
            started,
            deadline,
            handler,
            woken: Arc::new(Woken(AtomicBool::new(true))),
        }
    }

    /// Woken, so a poll makes progress (not sleeping).
    pub fn runnable(&self) -> bool {
        self.woken.0.load(Ordering::SeqCst)
    }

    /// Runs the handler to its next await (one port call) or to its end.
    pub fn poll(&mut self) -> Poll<Result<Report>> {
        self.woken.0.store(false, Ordering::SeqCst);
        let waker = Waker::from(self.woken.clone());
        let mut cx = Context::from_waker(&waker);
        self.handler.as_mut().poll(&mut cx)
    }
}
