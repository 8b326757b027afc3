//! checkpoint
pub mod error;
pub mod store;
