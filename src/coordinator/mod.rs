//! The coordinator: request machines and the glue that waits on them.

pub mod call;
pub mod consistency;
pub mod readbatch;
