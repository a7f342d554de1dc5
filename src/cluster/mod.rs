//! The cluster: the cluster file, the ring and placement.

pub mod consistency;
pub mod ring;
