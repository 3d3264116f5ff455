//! Logging (and later traces and metrics) set-up shared by every process.
