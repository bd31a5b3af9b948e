//! Where the signals come from: [`poll`] reads every collector's `/metrics` (held reads, so a
//! change arrives without waiting for a poll) and hands the pages to [`aggregate`], which
//! combines them into one [`aggregate::View`] per pass: per workload, known or why not.

pub mod aggregate;
pub mod poll;
