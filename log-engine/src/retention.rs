//! Retention: whole sealed segments are deleted when all their records are older than
//! the age limit, or while the log is larger than the size limit. Filled in below.
