//! What the example programs (board_load, soak) share.

pub mod pty;
