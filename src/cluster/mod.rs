//! The cluster: the cluster file, the ring and placement.

pub mod ring;
