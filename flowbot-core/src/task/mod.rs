//! The durable task scheduler: task values, storage traits, the worker pool and cron
//! schedules. See the crate docs for the delivery guarantees.

mod client;
mod config;
mod liveness;
mod queue;
mod schedule;
mod types;
mod worker;

pub use client::TaskClient;
pub use config::{Liveness, MAX_LEASE, MAX_WORKERS, QueueConfig, WorkerConfig};
pub use queue::{ScheduleStore, TaskAdmin, TaskQueue};
pub use schedule::{
    CronConfig, CronSpec, FireOutcome, FirePlan, MAX_CATCH_UP_FIRES, MisfirePolicy, ScheduleDef,
    ScheduleState, fire_due, plan_fires, register_schedule, run_cron,
};
pub(crate) use types::after;
#[cfg(feature = "workflows")]
pub(crate) use types::days;
pub use types::{
    AttemptError, Backoff, ClaimRequest, ClaimedTask, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_QUEUE,
    DeadLetter, Enqueued, FailOutcome, Failure, MAX_DELAY, NewTask, RetryPolicy, TaskFilter,
    TaskId, TaskRecord, TaskState,
};
pub use worker::{
    KindOptions, TaskContext, TaskHandler, TaskRegistry, WorkerPool, WorkerStats, handler_fn,
    in_task_handler, superseded, typed_handler,
};
