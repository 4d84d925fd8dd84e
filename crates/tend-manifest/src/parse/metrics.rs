//! `[metrics]`: where the platform scrapes each instance's own metrics.

use super::{Got, Tbl, Walker};
use crate::spec::{MetricsSection, MAX_METRICS_INTERVAL, MIN_METRICS_INTERVAL};

impl Walker<'_> {
    pub(super) fn metrics(&mut self, t: &Tbl) -> Option<MetricsSection> {
        self.check_keys(t);
        let path = match self.nonempty_string(t, "path") {
            Got::Ok((path, span)) => self
                .check_path(&path, span, "the metrics path", Some("path"))
                .then_some(path),
            Got::Absent => {
                self.report(
                    t.header.clone(),
                    "[metrics] needs a `path`",
                    "no path in this section",
                    Some("for example: `path = \"/metrics\"`; or remove [metrics] to not scrape the service".into()),
                );
                None
            }
            Got::Bad => None,
        };
        let interval = match self.duration(t, "interval", false) {
            Got::Ok(d) if !(MIN_METRICS_INTERVAL..=MAX_METRICS_INTERVAL).contains(&d) => {
                let span = self.key_span(t, "interval");
                self.report(
                    span,
                    format!(
                        "`interval` must be between {} and {}",
                        crate::format_duration(MIN_METRICS_INTERVAL),
                        crate::format_duration(MAX_METRICS_INTERVAL)
                    ),
                    "out of range",
                    Some("scraping more often than every second costs more than it tells; `interval = \"10s\"` is usual".into()),
                );
                return None;
            }
            Got::Ok(d) => Some(d),
            Got::Absent => None,
            Got::Bad => return None,
        };
        Some(MetricsSection {
            path: path?,
            interval,
        })
    }
}
