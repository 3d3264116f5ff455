//! `pas programmer`: one AI programmer serving `pas.v1.Programmer`.

pub mod aider;
pub mod breaker;
pub mod classify;
pub mod queue;
pub mod worktree;
