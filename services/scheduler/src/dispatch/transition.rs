//! A transition of the scheduler: built in memory while `transitions` is held, then finished
//! at once. Its changes are stored as one batch (all or nothing); only then are its events
//! told to watchers, its stopped attempts told to their nodes and their slots freed.

use zkmesh_proto::*;

use crate::dispatch::{Core, Result, db_error};
use crate::store::{Change, attempt_state};

/// What one step of a task (or of several) changes.
#[derive(Default)]
pub(crate) struct Transition {
    changes: Vec<Change>,
    /// `(node, attempt, reason)`: attempts to stop on their nodes once stored.
    stops: Vec<(String, String, String)>,
    /// Tasks went back to the queue: run placement.
    wake: bool,
    /// A hold is to be released: run the sweep.
    wake_sweep: bool,
    /// Counted once stored.
    counts: Vec<Count>,
}

/// A scheduler counter a transition bumps once it is stored.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Count {
    Expired,
    Rejected,
    Failed,
    Settled,
}

impl Transition {
    /// A transition of one change.
    pub(crate) fn of(change: Change) -> Transition {
        let mut t = Transition::default();
        t.push(change);
        t
    }

    pub(crate) fn push(&mut self, change: Change) {
        self.changes.push(change);
    }

    /// An event of `task_id` that moves it to `state`.
    pub(crate) fn event(&mut self, task_id: &str, state: TaskState, message: impl Into<String>) {
        self.push(Change::event(task_id, state, message));
    }

    /// Stops `attempt_id` on `node_id` once stored (frees its slot, tells the node).
    pub(crate) fn stop(&mut self, node_id: &str, attempt_id: &str, reason: &str) {
        self.stops.push((
            node_id.to_string(),
            attempt_id.to_string(),
            reason.to_string(),
        ));
    }

    pub(crate) fn wake_placement(&mut self) {
        self.wake = true;
    }

    pub(crate) fn wake_sweep(&mut self) {
        self.wake_sweep = true;
    }

    /// Bumps `count` once the transition is stored (a batch that fails is retried, and must
    /// not be counted twice).
    pub(crate) fn count(&mut self, count: Count) {
        self.counts.push(count);
    }

    /// The state attempt `attempt_id` is in once this transition is stored: its last change
    /// here, or `stored`. Lets a step count attempts before the batch is written.
    pub(crate) fn attempt_state<'a>(&'a self, attempt_id: &str, stored: &'a str) -> &'a str {
        self.changes
            .iter()
            .rev()
            .find_map(|c| match c {
                Change::Attempt {
                    attempt_id: id,
                    state,
                } if id == attempt_id => Some(*state),
                Change::Report { report, .. } if report.attempt_id == attempt_id => {
                    Some(attempt_state::REPORTED)
                }
                _ => None,
            })
            .unwrap_or(stored)
    }
}

impl Core {
    /// Stores the transition's changes in one batch, then tells watchers and nodes.
    pub(crate) async fn finish(&self, t: Transition) -> Result<()> {
        let events = self.store.apply(&t.changes).await.map_err(db_error)?;
        let records = t.changes.iter().filter_map(|c| match c {
            Change::Record(r) => Some(r),
            _ => None,
        });
        let mut workers = None;
        for r in records {
            let workers = match &mut workers {
                Some(w) => w,
                None => workers.insert(self.workers.lock().await),
            };
            if let Some(w) = workers.get_mut(&r.node_id) {
                w.record.verified += r.verified;
                w.record.rejected += r.rejected;
                w.record.spot_checks += r.spot_checks;
                w.record.spot_failures += r.spot_failures;
            }
        }
        drop(workers);
        for count in t.counts {
            match count {
                Count::Expired => self.metrics.expired.inc(),
                Count::Rejected => self.metrics.rejected.inc(),
                Count::Failed => self.metrics.failed.inc(),
                Count::Settled => self.metrics.settled.inc(),
            };
        }
        for event in events {
            tracing::debug!(task_id = %event.task_id, state = ?event.state(), message = %event.message, "task event");
            let _ = self.events.send(event);
        }
        for (node_id, attempt_id, reason) in t.stops {
            self.free_slot(&node_id, &attempt_id).await;
            self.send_to(
                &node_id,
                work_response::Kind::Cancel(CancelAttempt { attempt_id, reason }),
            )
            .await;
        }
        if t.wake {
            self.wake();
        }
        if t.wake_sweep {
            self.wake_sweep.notify_one();
        }
        Ok(())
    }
}
