//! The parts of `notifier-sim`, one concern each: the command line (`args`), the run
//! (`run`), the record of both sides (`trace`) and the explanation drawn from it
//! (`explain`), the printed summary and `report.json` (`report`), and `timeline.svg`
//! (`timeline`, on the small writer `svg`).

pub mod args;
pub mod explain;
pub mod one_line;
pub mod report;
pub mod run;
pub mod svg;
pub mod timeline;
pub mod trace;
