//! `gradient-tui`: a live monitor of a Gradient server in the terminal. [`state`] is what is shown and how
//! keys change it (no I/O), [`ui`] draws it, [`net`] talks to the server on another thread through the
//! generated client.

pub mod net;
pub mod state;
pub mod ui;
