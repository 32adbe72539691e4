//! The nightly report: JSON, Markdown summary, JUnit XML, a static HTML page with
//! charts, and a Prometheus textfile, all rendered from one [`model::NightlyReport`].

pub mod model;
