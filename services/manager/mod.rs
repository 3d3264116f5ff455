//! `pas manager`: Manager-Code serving `pas.v1.ProgrammerPool`.

pub mod budget;
pub mod eligibility;
pub mod store;
pub mod strategy;
pub mod waitqueue;
