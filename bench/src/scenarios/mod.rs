//! One module per scenario; each appends its rows.

pub mod ceiling;
pub mod datapath;
pub mod downloads;
pub mod kernel;
pub mod latency;
pub mod memory;
pub mod reference;
pub mod relay_loop;
pub mod small;
