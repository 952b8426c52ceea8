//! Per-user quotas: what one user may have in the scheduler at once, checked under a lock per
//! account up to the write the check allows.

use tonic::{Code, Status};
use zkmesh_kit::error::{reasons, refusal};

use super::SchedulerService;
use crate::dispatch::db_error;
use crate::store::Usage;

impl SchedulerService {
    /// The account's quota lock (see `quota_locks`).
    pub(super) async fn quota_lock(&self, account: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .quota_locks
            .lock()
            .unwrap()
            .entry(account.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Refuses what would take `account` past a per-user quota, naming the quota.
    pub(super) async fn check_quota(&self, account: &str, adding: Usage) -> Result<(), Status> {
        let config = &self.core.config;
        let used = self.core.store.usage(account).await.map_err(db_error)?;
        let over = |what: &str, used: u64, adding: u64, max: u64| {
            (adding > 0 && used.saturating_add(adding) > max).then(|| {
                refusal(
                    Code::ResourceExhausted,
                    reasons::QUOTA_EXCEEDED,
                    format!(
                        "quota of {what} reached: {account} has {used}, this would add {adding}, the most is {max}"
                    ),
                )
            })
        };
        let refused = over(
            "tasks in flight",
            used.tasks_in_flight,
            adding.tasks_in_flight,
            config.max_tasks_in_flight_per_user,
        )
        .or_else(|| {
            over(
                "input bytes of tasks in flight",
                used.queued_input_bytes,
                adding.queued_input_bytes,
                config.max_queued_input_bytes_per_user,
            )
        })
        .or_else(|| {
            over(
                "module bytes",
                used.module_bytes,
                adding.module_bytes,
                config.max_module_bytes_per_user,
            )
        });
        refused.map_or(Ok(()), Err)
    }
}
