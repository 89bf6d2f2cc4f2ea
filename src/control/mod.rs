//! The control plane: the migration state machine, the guards checked before each flip, and
//! the commands on-call engineers run (from `fanoutctl` or the controller Lambda's payload).
//!
//! - [`machine`]: states, actions, the transition table (pure).
//! - [`guards`]: each guard's verdict from plain facts (pure).
//! - [`record`]: the migration's stored state and its history entries (plain data).
//! - [`commands`]: status, plan, cutover, rollback, commit, pause, resume, history, dlq ack.

pub mod commands;
pub mod guards;
pub mod machine;
pub mod record;
